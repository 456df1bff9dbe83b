package upstream

import (
	"io"
	"time"
)

// Observer hears of every request a Client makes for a caller, for metrics.
// It is an interface, not a metrics library, so that this package stays free
// of how its numbers are exported. Its methods are called on request paths:
// they must be quick and safe for concurrent use.
type Observer interface {
	// Answered reports one request: op is "manifest", "blob" or "tags";
	// took runs until the response headers arrived or the request failed,
	// token handshake and retries included; failure is the zero Failure
	// for a 200 or 206.
	Answered(registry, op string, took time.Duration, failure Failure)
	// Received reports n bytes of a response body read from the registry.
	Received(registry string, n int)
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
