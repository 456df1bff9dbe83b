package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Kind is what kind of failure an upstream error is. The Client decides it
// once, where it makes the error; its health, the metrics, the status page
// and the proxy's answer to its own client all read it from there.
type Kind uint8

const (
	KindNone      Kind = iota // no failure: the registry answered 200 or 206
	KindOther                 // none of the below: a failure of this machine, or a bug
	KindDown                  // refused at once: the upstream is marked down
	KindTimeout               // no answer in time
	KindNetwork               // connection refused or reset, a name not resolved, a body cut short
	KindTLS                   // the registry's certificate did not verify
	KindHandshake             // the token handshake failed for the registry's setup
	KindStatus                // the registry answered another status (Failure.Status says which)
	KindCanceled              // our caller left; says nothing of the upstream
)

var kindNames = [...]string{"none", "other", "down", "timeout", "network", "tls", "handshake", "status", "canceled"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Failure is how an upstream request failed: its Kind and, for KindStatus,
// the HTTP status the registry answered. The zero Failure is success.
//
// The status is kept whole so that an answer about one image (a 404, or a
// lower tier's 503 for an image it cannot get) can be told from an outage
// of the registry by looking at the status alone, in Outage.
type Failure struct {
	Kind   Kind
	Status int
	// Answered marks a 503 in the registry API's own words (answeredUnavailable):
	// a lower tier saying it cannot serve this one image now, not a tier that
	// is down. Still Unavailable for that request; never an Outage.
	Answered bool
}

// Reason is the failure as one word, "" for success: the reason label of
// regmirror_upstream_errors_total, and what the status page and /readyz say
// of a down upstream. A status is named by its class.
func (f Failure) Reason() string {
	switch {
	case f.Kind == KindNone:
		return ""
	case f.Kind != KindStatus:
		return f.Kind.String()
	case f.Status == http.StatusNotFound:
		return "not_found"
	case f.Status == http.StatusUnauthorized || f.Status == http.StatusForbidden:
		return "denied"
	case f.Status == http.StatusTooManyRequests:
		return "rate_limited"
	case f.Status >= 500:
		return "server_error"
	default:
		return "bad_status"
	}
}

// Outage reports whether the failure means the registry cannot be reached
// (no answer in time, the network, a 5xx), so the Client marks it down. A
// 404 or 401 is an answer, a 429 is about our quota, a certificate or a
// handshake that fails is the registry's setup (asking again will not help,
// but neither will waiting), and a caller that left says nothing.
func (f Failure) Outage() bool {
	return f.Kind == KindTimeout || f.Kind == KindNetwork || (f.Kind == KindStatus && f.Status >= 500 && !f.Answered)
}

// Unavailable reports whether the registry could not be asked: down, no
// answer in time, the network, failing (5xx) or rate limiting us (429). Only
// then is an answer from the cache better than the error.
func (f Failure) Unavailable() bool {
	switch f.Kind {
	case KindDown, KindTimeout, KindNetwork:
		return true
	case KindStatus:
		return f.Status >= 500 || f.Status == http.StatusTooManyRequests
	}
	return false
}

// Error is an upstream failure, with the registry's name for messages.
type Error struct {
	Registry string
	Failure
	Err             error
	RetryAfter      string // the upstream's Retry-After, if it sent one
	WithCredentials bool   // we presented credentials of our own
}

func (e *Error) Error() string { return fmt.Sprintf("upstream %s: %v", e.Registry, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// FailureOf returns how err failed: the Failure the Client gave its *Error,
// or, for an error met outside the Client's requests (reading a body it
// returned, a caller's own context), the same rules applied to err. A nil
// error is success.
func FailureOf(err error) Failure {
	if err == nil {
		return Failure{}
	}
	if e, ok := errors.AsType[*Error](err); ok && e.Kind != KindNone {
		return e.Failure
	}
	return classify(err)
}

// ErrDown means the upstream failed recently and is not asked again until a
// background probe finds it answering: requests fail at once instead of each
// waiting out a timeout.
var ErrDown = errors.New("upstream is down")

// ErrUntrustedCertificate means the registry's TLS certificate did not verify.
var ErrUntrustedCertificate = errors.New("TLS certificate not trusted")

// ErrHandshake means the token handshake failed for a reason of the
// registry's setup, e.g. a token server go-containerregistry will not call
// (a private address other than the registry's own: its guard against SSRF).
var ErrHandshake = errors.New("token handshake failed")

// classify is the one set of rules that tells failures apart. The order
// matters: an answer first, then what we know for certain (down, the
// certificate, the handshake, our caller leaving), then timeouts before
// the network errors that carry them.
func classify(err error) Failure {
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return Failure{Kind: KindStatus, Status: te.StatusCode}
	}
	switch {
	case errors.Is(err, ErrDown):
		return Failure{Kind: KindDown}
	case errors.Is(err, ErrUntrustedCertificate) || isCertificateError(err):
		return Failure{Kind: KindTLS}
	case errors.Is(err, ErrHandshake):
		return Failure{Kind: KindHandshake}
	case errors.Is(err, context.Canceled):
		return Failure{Kind: KindCanceled}
	// Is, not As, for a socket's deadline: go-containerregistry joins its
	// https and http ping errors, and the first may be our own refusal to
	// try the other scheme.
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return Failure{Kind: KindTimeout}
	case IsNetworkError(err) || errors.Is(err, io.ErrUnexpectedEOF):
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return Failure{Kind: KindTimeout}
		}
		return Failure{Kind: KindNetwork}
	}
	return Failure{Kind: KindOther}
}

func isCertificateError(err error) bool {
	_, verify := errors.AsType[*tls.CertificateVerificationError](err)
	_, unknown := errors.AsType[x509.UnknownAuthorityError](err)
	_, host := errors.AsType[x509.HostnameError](err)
	_, invalid := errors.AsType[x509.CertificateInvalidError](err)
	return verify || unknown || host || invalid
}

// IsNetworkError reports whether err is a failure to talk over the network:
// a *url.Error of the HTTP client, a *net.OpError (refused, reset, DNS), a
// timeout; a net.Error, but not a bare syscall.Errno. An errno has
// net.Error's methods too, so without the exception a local file's failure
// (an *fs.PathError wrapping EIO or ENOTDIR) would pass for the network's.
// A socket's errno always comes inside a *net.OpError, which errors.As meets
// first on its way down the chain.
func IsNetworkError(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	if !ok {
		return false
	}
	_, bare := ne.(syscall.Errno)
	return !bare
}
