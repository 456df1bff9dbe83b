package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Observer hears of every request a Client makes for a caller, for metrics.
// It is an interface, not a metrics library, so that this package stays free
// of how its numbers are exported. Its methods are called on request paths:
// they must be quick and safe for concurrent use.
type Observer interface {
	// Answered reports one request: op is "manifest", "blob" or "tags";
	// took runs until the response headers arrived or the request failed,
	// token handshake and retries included; failure is "" for a 200 and
	// otherwise one of the Failure values.
	Answered(registry, op string, took time.Duration, failure string)
	// Received reports n bytes of a response body read from the registry.
	Received(registry string, n int)
}

// Failure values: why a request failed, as a small fixed set fit for a
// metric label.
const (
	FailureDown        = "down"         // refused at once: the upstream is marked down
	FailureTimeout     = "timeout"      // no answer in time
	FailureNetwork     = "network"      // connection refused, reset, DNS, ...
	FailureTLS         = "tls"          // the certificate did not verify
	FailureHandshake   = "handshake"    // the token handshake failed for the registry's setup
	FailureNotFound    = "not_found"    // 404
	FailureDenied      = "denied"       // 401 or 403
	FailureRateLimited = "rate_limited" // 429
	FailureServer      = "server_error" // 5xx
	FailureStatus      = "bad_status"   // any other status but 200
	FailureCanceled    = "canceled"     // our caller left; says nothing of the upstream
	FailureOther       = "other"
)

// Failure classifies an error of this package's Client into a Failure value.
func Failure(err error) string {
	if err == nil {
		return ""
	}
	if te, ok := errors.AsType[*transport.Error](err); ok {
		switch s := te.StatusCode; {
		case s == http.StatusNotFound:
			return FailureNotFound
		case s == http.StatusUnauthorized || s == http.StatusForbidden:
			return FailureDenied
		case s == http.StatusTooManyRequests:
			return FailureRateLimited
		case s >= 500:
			return FailureServer
		default:
			return FailureStatus
		}
	}
	switch {
	case errors.Is(err, ErrDown):
		return FailureDown
	case errors.Is(err, ErrUntrustedCertificate):
		return FailureTLS
	case errors.Is(err, ErrHandshake):
		return FailureHandshake
	case errors.Is(err, context.Canceled):
		return FailureCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return FailureTimeout
	}
	if IsNetworkError(err) {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return FailureTimeout
		}
		return FailureNetwork
	}
	return FailureOther
}

// countingBody reports the bytes read through it to an Observer.
type countingBody struct {
	io.ReadCloser
	registry string
	obs      Observer
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.obs.Received(b.registry, n)
	}
	return n, err
}
