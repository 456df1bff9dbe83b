package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
)

// TagIndex is what this mirror learned of tags: what each resolved to and
// when, and the listings built from those answers when upstream cannot be
// asked.
type TagIndex interface {
	// Tag is the last answer for a tag; cache.ErrNotFound when there is none.
	Tag(registry, repo, tag string) (cache.TagAnswer, error)
	SetTag(registry, repo, tag string, a cache.TagAnswer) error
	DeleteTag(registry, repo, tag string) error
	Tags(registry, repo string) ([]string, error)
	Repositories() ([]cache.Repository, error)
	// ShareTag is, in a fleet of replicas on one bucket, the fleet's answer
	// for a tag whose own answer is missing or older than ttl, and whether to
	// use it or ask upstream (cache.AskUpstream outside a fleet).
	ShareTag(ctx context.Context, registry, repo, tag string, ttl time.Duration) (cache.TagAnswer, cache.TagTurn)
}

// maxTagList caps a tag list relayed from upstream.
const maxTagList = 16 << 20

// serveTags lists a repository's tags from its upstream, paged here: at
// most n tags in lexical order after last, with a Link to the next page,
// whatever paging the upstream does or does not do. When upstream cannot
// answer, the tags this mirror has answers for are listed instead, with a
// Warning saying so.
func (p *Proxy) serveTags(w *response, r *http.Request, rt route) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	w.setCache(cachePass)
	ctx, src := upstream.WithSource(r.Context())
	tags, tier, err := p.upstreamTags(ctx, p.ups[rt.registry], rt.repo, last)
	if src.Fallback() != "" {
		w.Header().Set("Warning", answeredBy(src.Fallback()))
	}
	if tier.stale() {
		w.setCache(cacheStale) // a lower tier listed what its cache knows
	}
	tier.passOn(w.Header())
	if err != nil {
		if !upstream.FailureOf(err).Unavailable() {
			return err
		}
		known, lerr := p.tags.Tags(rt.registry, rt.repo)
		if lerr != nil || len(known) == 0 {
			return err
		}
		tags = known
		w.setCache(cacheStale)
		w.Header().Set("Warning", fmt.Sprintf(`299 - "upstream %s unreachable: tags known to this mirror's cache"`, rt.registry))
	}
	tags, more := page(tags, n, last)
	if tags == nil {
		tags = []string{} // "tags": [], not null
	}
	return writeList(w, r, map[string]any{"name": rt.repo, "tags": tags}, more, n, tags)
}

// maxTagPages bounds the upstream pages read for one tag list.
const maxTagPages = 1000

// upstreamTags returns the repository's tags after last, sorted, with no
// repeats: every page the upstream links to, read in turn, up to maxTagList
// bytes in all. Asking with last spares a paging upstream the tags before
// it; one that ignores last sends them, and page drops them. The first
// page's tier headers come back too: a lower tier's Warning that it listed
// from its cache, and the quota, for our client.
func (p *Proxy) upstreamTags(ctx context.Context, up Upstream, repo, last string) ([]string, tierHeaders, error) {
	var tags []string
	var tier tierHeaders
	budget := int64(maxTagList)
	for i := range maxTagPages {
		resp, err := up.Tags(ctx, repo, "", last)
		if err != nil {
			return nil, tier, err
		}
		if i == 0 {
			tier = tierOf(resp.Header)
		}
		var list struct {
			Tags []string `json:"tags"`
		}
		lr := &io.LimitedReader{R: resp.Body, N: budget + 1}
		err = json.NewDecoder(lr).Decode(&list)
		resp.Body.Close()
		if budget = lr.N - 1; budget < 0 {
			return nil, tier, fmt.Errorf("tag list of %s: %w: larger than %d bytes", repo, errUpstreamInvalid, maxTagList)
		}
		if err != nil {
			return nil, tier, fmt.Errorf("tag list of %s: %w: %v", repo, errUpstreamInvalid, err)
		}
		tags = append(tags, list.Tags...)
		next, ok := nextLast(resp.Header.Get("Link"))
		if !ok || next <= last {
			break // no next page, or one that does not move on
		}
		last = next
	}
	slices.Sort(tags)
	return slices.Compact(tags), tier, nil
}

// nextLast is the last parameter of a next-page Link header, as
// distribution and Docker Hub write it.
func nextLast(link string) (string, bool) {
	u, ok := nextLink(link)
	if !ok {
		return "", false
	}
	last := u.Query().Get("last")
	return last, last != ""
}

// nextLink is the URL of a next-page Link header (`<url>; rel="next"`).
func nextLink(link string) (*url.URL, bool) {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start || !strings.Contains(link[end:], "next") {
		return nil, false
	}
	u, err := url.Parse(link[start+1 : end])
	return u, err == nil
}

// serveCatalog lists the repositories this mirror has answers for: what an
// offline mirror can serve. The default registry's repositories are listed
// by name, others' with their registry in front, as clients address them.
func (p *Proxy) serveCatalog(w http.ResponseWriter, r *http.Request) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	repos, err := p.tags.Repositories()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(repos))
	for _, repo := range repos {
		if repo.Registry == p.opt.Default {
			names = append(names, repo.Name)
		} else if p.has(repo.Registry) {
			names = append(names, repo.Registry+"/"+repo.Name)
		}
	}
	slices.Sort(names)
	names, more := page(names, n, last)
	return writeList(w, r, map[string]any{"repositories": names}, more, n, names)
}

// defaultPage and maxPage bound a locally built list page.
const (
	defaultPage = 100
	maxPage     = 10000
)

func pageParams(r *http.Request) (n int, last string, err error) {
	q := r.URL.Query()
	n = defaultPage
	if r.URL.Path != "/v2/_catalog" {
		// A tag list asked for without n is whole, as distribution gives it:
		// clients that do not follow Link still see every tag.
		n = maxPage
	}
	if s := q.Get("n"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			return 0, "", &ociError{status: http.StatusBadRequest, code: "PAGINATION_NUMBER_INVALID", message: fmt.Sprintf("invalid n %q", s)}
		}
		n = min(n, maxPage)
	}
	last = q.Get("last")
	if last != "" && len(last) > maxName+1+128 {
		return 0, "", errTagInvalid(last)
	}
	if r.URL.Path != "/v2/_catalog" && last != "" && !isTag(last) {
		return 0, "", errTagInvalid(last)
	}
	return n, last, nil
}

// page returns the sorted items after last, at most n of them, and whether
// more follow.
func page(items []string, n int, last string) ([]string, bool) {
	start := 0
	if last != "" {
		start, _ = slices.BinarySearch(items, last)
		if start < len(items) && items[start] == last {
			start++
		}
	}
	items = items[start:]
	if len(items) > n {
		return items[:n], true
	}
	return items, false
}

// writeList writes a JSON list page, with a Link to the next page when more follow.
func writeList(w http.ResponseWriter, r *http.Request, body map[string]any, more bool, n int, items []string) error {
	if more && len(items) > 0 {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {items[len(items)-1]}}
		if ns := r.URL.Query().Get("ns"); ns != "" {
			q.Set("ns", ns)
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
	}
	return writeJSON(w, r, http.StatusOK, body)
}
