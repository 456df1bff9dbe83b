package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"
)

// ErrDown means the upstream failed recently and is not asked again until a
// background probe finds it answering: requests fail at once instead of each
// waiting out a timeout.
var ErrDown = errors.New("upstream is down")

// health tracks whether an upstream answers. One probe goroutine runs while
// it is down, with back-off, and marks it up when its /v2/ answers.
type health struct {
	mu      sync.Mutex
	down    bool
	since   time.Time
	reason  string
	probing bool
}

// Health is what we know of an upstream's availability.
type Health struct {
	Up     bool
	Since  time.Time // when it went down; zero while up
	Reason string    // why, without URLs or credentials
}

// Health reports whether the upstream is up.
func (c *Client) Health() Health {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	return Health{Up: !c.health.down, Since: c.health.since, Reason: c.health.reason}
}

func (c *Client) isDown() bool {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	return c.health.down
}

// noteFailure marks the upstream down when err means it cannot be reached:
// a network error, a timeout, or a 5xx. A 404 or 401 is an answer, and a 429
// is about our quota, not the registry's health.
func (c *Client) noteFailure(err error) {
	if !unreachable(err) || isAnswer(err) {
		return
	}
	c.health.mu.Lock()
	if c.health.down {
		c.health.mu.Unlock()
		return
	}
	c.health.down, c.health.since, c.health.reason = true, time.Now(), reason(err)
	start := !c.health.probing
	c.health.probing = true
	c.health.mu.Unlock()
	c.log.Warn("upstream down: serving from cache until it answers again", zap.String("upstream", c.name), zap.String("reason", reason(err)))
	if start {
		c.probes.Add(1)
		go c.probe()
	}
}

func unreachable(err error) bool {
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return te.StatusCode >= 500
	}
	if errors.Is(err, context.Canceled) {
		return false // our caller left; says nothing of the upstream
	}
	return IsNetworkError(err) || errors.Is(err, context.DeadlineExceeded)
}

// Unavailable reports whether err means the upstream could not be asked:
// unreachable, timed out, failing (5xx), rate limiting us (429), or known to
// be down. Only then is an answer from the cache better than the error.
func Unavailable(err error) bool {
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests
	}
	return IsNetworkError(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrDown)
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

func reason(err error) string {
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return http.StatusText(te.StatusCode)
	}
	// Is, not As: go-containerregistry joins its https and http ping errors,
	// and the first may be our own refusal to try the other scheme.
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return "connection failed"
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return "name not resolved"
	}
	return "unreachable"
}

// probe asks the upstream's /v2/ until it answers with anything but a 5xx,
// waiting ProbeMin, then twice as long each time, up to ProbeMax.
func (c *Client) probe() {
	defer c.probes.Done()
	wait := c.probeMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-c.life.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if c.ping() {
			c.health.mu.Lock()
			down := time.Since(c.health.since)
			c.health.down, c.health.since, c.health.reason, c.health.probing = false, time.Time{}, "", false
			c.health.mu.Unlock()
			c.log.Info("upstream up again", zap.String("upstream", c.name), zap.Duration("was_down", down))
			return
		}
		wait = min(2*wait, c.probeMax)
	}
}

func (c *Client) ping() bool {
	// Under the client's own context, so Close interrupts a ping in progress.
	ctx, cancel := context.WithTimeout(c.life, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.JoinPath("v2/").String(), nil)
	if err != nil {
		return false
	}
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 500 // 401 is a registry asking for a token: it is up
}

// Close stops the client's background probe, if one runs, even mid-ping.
func (c *Client) Close() {
	c.stop()
	c.probes.Wait()
}
