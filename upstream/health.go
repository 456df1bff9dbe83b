package upstream

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// health tracks whether an upstream answers. One probe goroutine runs while
// it is down, with back-off, and marks it up when its /v2/ answers.
type health struct {
	mu      sync.Mutex
	down    bool
	since   time.Time
	failure Failure // why it went down
	probing bool
}

// Health is what we know of an upstream's availability.
type Health struct {
	Up     bool
	Since  time.Time // when it went down; zero while up
	Reason string    // why, in the words of the metrics' reason label (Failure.Reason)
}

// Health reports whether the upstream is up.
func (c *Client) Health() Health {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	return Health{Up: !c.health.down, Since: c.health.since, Reason: c.health.failure.Reason()}
}

func (c *Client) isDown() bool {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	return c.health.down
}

// noteFailure marks the upstream down when f is an outage (Failure.Outage).
func (c *Client) noteFailure(f Failure) {
	if !f.Outage() {
		return
	}
	c.health.mu.Lock()
	if c.health.down {
		c.health.mu.Unlock()
		return
	}
	c.health.down, c.health.since, c.health.failure = true, time.Now(), f
	start := !c.health.probing
	c.health.probing = true
	c.health.mu.Unlock()
	fields := []zap.Field{zap.String("upstream", c.name), zap.String("reason", f.Reason())}
	if f.Status != 0 {
		fields = append(fields, zap.Int("http_status", f.Status))
	}
	c.log.Warn("upstream down: serving from cache until it answers again", fields...)
	if start {
		c.probes.Add(1)
		go c.probe()
	}
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
			c.health.down, c.health.since, c.health.failure, c.health.probing = false, time.Time{}, Failure{}, false
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
