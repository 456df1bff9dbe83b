package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
)

// ociError is an error as a client sees it: a status and an OCI error code.
type ociError struct {
	status     int
	code       string
	message    string
	retryAfter string // passed on from a rate-limiting upstream
}

func (e *ociError) Error() string { return e.code + ": " + e.message }

func errNameInvalid(msg string) error {
	return &ociError{status: http.StatusBadRequest, code: "NAME_INVALID", message: msg}
}
func errDigestInvalid(s string) error {
	return &ociError{status: http.StatusBadRequest, code: "DIGEST_INVALID", message: fmt.Sprintf("invalid digest %q: want sha256:<64 lower-case hex digits> or sha512:<128>", s)}
}
func errTagInvalid(s string) error {
	return &ociError{status: http.StatusBadRequest, code: "TAG_INVALID", message: fmt.Sprintf("invalid tag %q", s)}
}

// errNoSuchEndpoint answers a path that is no endpoint of the API: 404 with
// code UNSUPPORTED, unlike a missing manifest or blob (MANIFEST_UNKNOWN, ...).
func errNoSuchEndpoint() error {
	return &ociError{status: http.StatusNotFound, code: "UNSUPPORTED", message: "no such endpoint in the registry API"}
}
func errUnsupported() error {
	return &ociError{status: http.StatusMethodNotAllowed, code: "UNSUPPORTED", message: "this registry is a read-only mirror: only GET and HEAD are allowed"}
}
func errRegistryUnknown(reg string) error {
	return &ociError{status: http.StatusNotFound, code: "NAME_UNKNOWN",
		message: fmt.Sprintf("registry %q is not configured on this mirror: add it to REGMIRROR_UPSTREAMS", reg)}
}
func errManifestUnknown(msg string) error {
	return &ociError{status: http.StatusNotFound, code: "MANIFEST_UNKNOWN", message: msg}
}

// answer is what a client is told of a failure. In message, {registry} is
// who failed ("upstream docker.io", or "upstream" when the error does not
// say), {status} the status an upstream answered ("503 Service
// Unavailable"), and {detail} the upstream error's own text.
type answer struct {
	status  int
	code    string // "" for a 404: the route's not-found code (notFoundCode)
	message string
}

// kindAnswers is what a client is told of an upstream failure, by its kind
// (upstream.FailureOf); a status answered upstream is in statusAnswer.
var kindAnswers = map[upstream.Kind]answer{
	upstream.KindDown:    {http.StatusServiceUnavailable, "UNAVAILABLE", "{registry} is unreachable"},
	upstream.KindTimeout: {http.StatusServiceUnavailable, "UNAVAILABLE", "{registry} is unreachable"},
	upstream.KindNetwork: {http.StatusServiceUnavailable, "UNAVAILABLE", "{registry} is unreachable"},
	upstream.KindTLS: {http.StatusBadGateway, "UNAVAILABLE", "{registry} presented a TLS certificate that does not verify: " +
		"list it in REGMIRROR_INSECURE_REGISTRIES, or add its CA to REGMIRROR_CA_FILE"},
	// The text is go-containerregistry's, about the registry's setup (e.g. a
	// token server on a private address); it carries no credentials.
	upstream.KindHandshake: {http.StatusBadGateway, "UNAVAILABLE", "{registry}: {detail}"},
	upstream.KindCanceled:  {http.StatusServiceUnavailable, "UNAVAILABLE", "request canceled"},
	upstream.KindOther:     {http.StatusInternalServerError, "UNKNOWN", "internal error"},
}

// statusAnswer is what a client is told of a status an upstream answered.
func statusAnswer(status int) answer {
	switch {
	case status == http.StatusNotFound:
		return answer{http.StatusNotFound, "", "{registry} answered {status}"}
	case status == http.StatusUnauthorized:
		return answer{http.StatusUnauthorized, "UNAUTHORIZED", "{registry} answered {status}: the repository is private or does not exist"}
	case status == http.StatusForbidden:
		return answer{http.StatusForbidden, "DENIED", "{registry} answered {status}"}
	case status == http.StatusTooManyRequests:
		return answer{http.StatusTooManyRequests, "TOOMANYREQUESTS", "{registry} answered {status}"}
	case status >= 500:
		return answer{http.StatusServiceUnavailable, "UNAVAILABLE", "{registry} answered {status}"}
	default:
		return answer{http.StatusBadGateway, "UNKNOWN", "{registry} answered {status}"}
	}
}

// sentinelAnswers is what a client is told of the cache's and the proxy's
// own sentinel errors, looked for before the upstream's kinds.
var sentinelAnswers = []struct {
	err error
	answer
}{
	{cache.ErrNotFound, answer{http.StatusNotFound, "", "not found"}},
	{cache.ErrDigestMismatch, answerBadContent},
	{cache.ErrSizeMismatch, answerBadContent},
	{errUpstreamInvalid, answerBadContent},
	{upstream.ErrWrongRegistry, answer{http.StatusBadGateway, "UNKNOWN", "{registry}: {detail}"}},
}

var (
	answerBadContent = answer{http.StatusBadGateway, "UNKNOWN", "{registry} sent content that does not match its digest"}
	// The full error, with its paths, goes to the access log.
	answerStoreFailed    = answer{http.StatusInternalServerError, "UNKNOWN", "the mirror's cache store failed"}
	answerBadCredentials = answer{http.StatusUnauthorized, "UNAUTHORIZED",
		"{registry} refused this mirror's credentials for it: check REGMIRROR_CREDENTIALS_FILE or REGMIRROR_DOCKER_CONFIG"}
)

// toOCI maps any error a handler returns to what the client is told: an
// *ociError as it is, a sentinel of the cache or the proxy by
// sentinelAnswers, a failure of this machine's store as such, and anything
// else by its upstream.Failure. The route kind picks the code for "not
// found"; internals never reach the client.
func toOCI(err error, kind routeKind) *ociError {
	if oe, ok := errors.AsType[*ociError](err); ok {
		return oe
	}
	ue, fromUpstream := errors.AsType[*upstream.Error](err)
	f := upstream.FailureOf(err)
	a, found := sentinelAnswer(err)
	switch {
	case found:
	case !fromUpstream && isStoreError(err):
		a = answerStoreFailed
	case f.Kind == upstream.KindStatus && f.Status == http.StatusUnauthorized && fromUpstream && ue.WithCredentials:
		a = answerBadCredentials
	case f.Kind == upstream.KindStatus:
		a = statusAnswer(f.Status)
	default:
		a = kindAnswers[f.Kind]
	}
	registry, detail := "upstream", ""
	if fromUpstream {
		registry, detail = "upstream "+ue.Registry, ue.Err.Error()
	}
	oe := &ociError{status: a.status, code: a.code, message: strings.NewReplacer("{registry}", registry,
		"{status}", strconv.Itoa(f.Status)+" "+http.StatusText(f.Status), "{detail}", detail).Replace(a.message)}
	if oe.code == "" {
		oe.code = notFoundCode(kind)
	}
	if oe.status == http.StatusTooManyRequests && fromUpstream {
		oe.retryAfter = ue.RetryAfter
	}
	return oe
}

func sentinelAnswer(err error) (answer, bool) {
	for _, s := range sentinelAnswers {
		if errors.Is(err, s.err) {
			return s.answer, true
		}
	}
	return answer{}, false
}

// notFound is a 404 with the route kind's not-found code.
func notFound(kind routeKind, msg string) *ociError {
	return &ociError{status: http.StatusNotFound, code: notFoundCode(kind), message: msg}
}

// notFoundCode is the OCI code of a 404 for a route kind.
func notFoundCode(kind routeKind) string {
	switch kind {
	case routeManifest:
		return "MANIFEST_UNKNOWN"
	case routeBlob:
		return "BLOB_UNKNOWN"
	}
	return "NAME_UNKNOWN"
}

// isStoreError reports whether err is a failed system call on this machine
// (create, write, fsync, rename, mkdir in the store): an *fs.PathError, an
// *os.LinkError, or an errno outside any network error. A socket's errno comes
// inside a *net.OpError, so a reset connection is not one.
func isStoreError(err error) bool {
	if upstream.IsNetworkError(err) {
		return false
	}
	_, path := errors.AsType[*fs.PathError](err)
	_, link := errors.AsType[*os.LinkError](err)
	_, errno := errors.AsType[syscall.Errno](err)
	return path || link || errno
}

// errUpstreamInvalid marks an upstream answer we cannot use (bad digest header,
// oversized manifest).
var errUpstreamInvalid = errors.New("invalid upstream answer")

// errorBody is the OCI error body: {"errors":[{"code":…,"message":…}]}.
type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError writes e as an OCI JSON error body.
func writeError(w http.ResponseWriter, r *http.Request, e *ociError) {
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.code, Message: e.message}}})
	h := w.Header()
	for _, k := range []string{"Content-Length", "Docker-Content-Digest", "Etag", "Last-Modified"} {
		h.Del(k)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	if e.status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	if e.retryAfter != "" {
		h.Set("Retry-After", e.retryAfter)
	}
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}
