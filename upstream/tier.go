package upstream

import (
	"errors"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// errAnsweredUnavailable marks a 503 that the registry's own software gave
// for one request: a mirror saying it cannot serve this image now (its own
// upstream is down and it has no copy), not a mirror that is down. It is
// still "unavailable" for that request (a cached answer is served, the
// fallbacks are asked), but it does not mark the upstream down, which would
// stop us asking it for everything else it has.
var errAnsweredUnavailable = errors.New("answered unavailable for this request")

// answeredUnavailable reports whether a 503 response is the registry API's
// own answer: an OCI error body with code UNAVAILABLE, or, for a HEAD (which
// has no body), the API's Docker-Distribution-API-Version header, which a
// load balancer or proxy in front of a dead registry does not send.
func answeredUnavailable(resp *http.Response, te *transport.Error) bool {
	if te.StatusCode != http.StatusServiceUnavailable {
		return false
	}
	for _, d := range te.Errors {
		if d.Code == "UNAVAILABLE" {
			return true
		}
	}
	return resp.Request != nil && resp.Request.Method == http.MethodHead &&
		resp.Header.Get("Docker-Distribution-API-Version") != ""
}

// isAnswer reports whether err is an answer about one request rather than a
// sign of an outage.
func isAnswer(err error) bool { return errors.Is(err, errAnsweredUnavailable) }
