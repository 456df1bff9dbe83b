package upstream

import (
	"context"
	"net/http"
	"net/url"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// FallbackObserver hears of every answer a fallback source gave in place of
// its registry's own upstream, for metrics. op is "manifest", "blob", "tags" or "referrers".
type FallbackObserver interface {
	FellBack(registry, fallback, op string)
}

// Sources is a registry's own upstream and the other sources of its content
// (mirror.gcr.io for Docker Hub, a second regional mirror), tried in the
// listed order when the primary cannot be asked: down, timing out, failing
// (5xx) or rate limiting us (429). Any other answer of the primary (a 404, a
// 401) is the answer. Content by digest is verified by the caller whatever
// its source; what a tag points to is only as good as the source that said
// it, which is why callers learn who answered (WithSource).
type Sources struct {
	primary   *Client
	fallbacks []*Client
	obs       FallbackObserver // nil: nobody listens
	log       *zap.Logger
}

// WithFallbacks returns primary with fallbacks behind it.
func WithFallbacks(primary *Client, fallbacks []*Client, obs FallbackObserver, log *zap.Logger) *Sources {
	return &Sources{primary: primary, fallbacks: fallbacks, obs: obs, log: log}
}

// Name is the registry's name, the primary's.
func (s *Sources) Name() string { return s.primary.Name() }

// Health is the primary's: fallbacks stand in for it, they do not make it up.
func (s *Sources) Health() Health { return s.primary.Health() }

// RateLimit is the primary's latest quota.
func (s *Sources) RateLimit() (RateLimit, bool) { return s.primary.RateLimit() }

// Fallbacks are the fallback clients, in trying order.
func (s *Sources) Fallbacks() []*Client { return s.fallbacks }

// Close closes every client.
func (s *Sources) Close() {
	s.primary.Close()
	for _, f := range s.fallbacks {
		f.Close()
	}
}

// Manifest is Client.Manifest from the first source that can answer.
func (s *Sources) Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error) {
	return s.try(ctx, "manifest", repo, func(c *Client) (*http.Response, error) { return c.Manifest(ctx, method, repo, ref) })
}

// Blob is Client.Blob from the first source that can answer.
func (s *Sources) Blob(ctx context.Context, method, repo string, h v1.Hash) (*http.Response, error) {
	return s.try(ctx, "blob", repo, func(c *Client) (*http.Response, error) { return c.Blob(ctx, method, repo, h) })
}

// BlobFrom is Client.BlobFrom from the first source that can answer: a
// download broken at the primary may go on at a fallback, as every byte is
// hashed against the digest either way.
func (s *Sources) BlobFrom(ctx context.Context, repo string, h v1.Hash, offset, size int64) (*http.Response, error) {
	return s.try(ctx, "blob", repo, func(c *Client) (*http.Response, error) { return c.BlobFrom(ctx, repo, h, offset, size) })
}

// Referrers is Client.Referrers from the first source that can answer.
func (s *Sources) Referrers(ctx context.Context, repo string, subject v1.Hash, page url.Values) (*http.Response, error) {
	return s.try(ctx, "referrers", repo, func(c *Client) (*http.Response, error) { return c.Referrers(ctx, repo, subject, page) })
}

// Tags is Client.Tags from the first source that can answer.
func (s *Sources) Tags(ctx context.Context, repo, n, last string) (*http.Response, error) {
	return s.try(ctx, "tags", repo, func(c *Client) (*http.Response, error) { return c.Tags(ctx, repo, n, last) })
}

func (s *Sources) try(ctx context.Context, op, repo string, ask func(*Client) (*http.Response, error)) (*http.Response, error) {
	resp, err := ask(s.primary)
	rec, _ := ctx.Value(sourceKey{}).(*Source)
	if err == nil || !FailureOf(err).Unavailable() || ctx.Err() != nil || (rec != nil && rec.primaryOnly) {
		return resp, err
	}
	for _, f := range s.fallbacks {
		fresp, ferr := ask(f)
		if ferr != nil {
			s.log.Debug("fallback could not answer", zap.String("upstream", s.Name()), zap.String("fallback", f.Name()),
				zap.String("op", op), zap.String("repo", repo), zap.Error(ferr))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		s.log.Info("answered by fallback", zap.String("upstream", s.Name()), zap.String("fallback", f.Name()),
			zap.String("op", op), zap.String("repo", repo), zap.NamedError("upstream_error", err))
		if s.obs != nil {
			s.obs.FellBack(s.Name(), f.Name(), op)
		}
		if rec != nil {
			rec.set(f.Name())
		}
		return fresp, nil
	}
	return nil, err // the primary's failure says what is wrong
}

// Source records which source answered the requests made under a context.
type Source struct {
	primaryOnly bool
	mu          sync.Mutex
	fallback    string
}

type sourceKey struct{}

// WithSource returns a context under which Sources records which fallback,
// if any, answered; read it from the Source afterwards.
func WithSource(ctx context.Context) (context.Context, *Source) {
	s := &Source{}
	return context.WithValue(ctx, sourceKey{}, s), s
}

// PrimaryOnly returns a context under which Sources asks the primary only:
// for a question the cache can answer when the primary cannot (is a cached
// tag still current?), a fallback's word is worth less than our own.
func PrimaryOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, sourceKey{}, &Source{primaryOnly: true})
}

func (s *Source) set(name string) {
	s.mu.Lock()
	s.fallback = name
	s.mu.Unlock()
}

// Fallback is the name of the fallback that answered, or "" when none did.
func (s *Source) Fallback() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fallback
}
