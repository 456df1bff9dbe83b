package upstream

import (
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

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
