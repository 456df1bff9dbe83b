package upstream_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// TestFailureTable is the one table of what each failure means: the word
// the metrics and the status page use, whether it marks the upstream down,
// and whether a cached answer is served instead.
func TestFailureTable(t *testing.T) {
	status := func(code int) upstream.Failure { return upstream.Failure{Kind: upstream.KindStatus, Status: code} }
	tests := []struct {
		failure     upstream.Failure
		reason      string
		outage      bool
		unavailable bool
	}{
		{upstream.Failure{}, "", false, false},
		{upstream.Failure{Kind: upstream.KindDown}, "down", false, true},
		{upstream.Failure{Kind: upstream.KindTimeout}, "timeout", true, true},
		{upstream.Failure{Kind: upstream.KindNetwork}, "network", true, true},
		{upstream.Failure{Kind: upstream.KindTLS}, "tls", false, false},
		{upstream.Failure{Kind: upstream.KindHandshake}, "handshake", false, false},
		{upstream.Failure{Kind: upstream.KindCanceled}, "canceled", false, false},
		{upstream.Failure{Kind: upstream.KindOther}, "other", false, false},
		{status(http.StatusNotFound), "not_found", false, false},
		{status(http.StatusUnauthorized), "denied", false, false},
		{status(http.StatusForbidden), "denied", false, false},
		{status(http.StatusTooManyRequests), "rate_limited", false, true},
		{status(http.StatusInternalServerError), "server_error", true, true},
		{status(http.StatusServiceUnavailable), "server_error", true, true},
		{status(http.StatusTeapot), "bad_status", false, false},
	}
	for _, tt := range tests {
		f := tt.failure
		if f.Reason() != tt.reason || f.Outage() != tt.outage || f.Unavailable() != tt.unavailable {
			t.Errorf("%v %d: reason %q, outage %v, unavailable %v; want %q, %v, %v",
				f.Kind, f.Status, f.Reason(), f.Outage(), f.Unavailable(), tt.reason, tt.outage, tt.unavailable)
		}
	}
}

// timeoutErr is a net.Error that timed out, as a dial or a read deadline gives.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestFailureOf(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errors.New("connection refused"))}
	tests := []struct {
		name string
		err  error
		want upstream.Failure
	}{
		{"success", nil, upstream.Failure{}},
		{"a status", &transport.Error{StatusCode: http.StatusNotFound}, upstream.Failure{Kind: upstream.KindStatus, Status: 404}},
		{"a status inside a wrap", fmt.Errorf("x: %w", &transport.Error{StatusCode: 503}), upstream.Failure{Kind: upstream.KindStatus, Status: 503}},
		{"down", fmt.Errorf("x: %w", upstream.ErrDown), upstream.Failure{Kind: upstream.KindDown}},
		{"deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), upstream.Failure{Kind: upstream.KindTimeout}},
		{"socket deadline", &url.Error{Op: "Get", URL: "http://r.test/v2/", Err: os.ErrDeadlineExceeded}, upstream.Failure{Kind: upstream.KindTimeout}},
		{"net timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, upstream.Failure{Kind: upstream.KindTimeout}},
		{"canceled", fmt.Errorf("get: %w", context.Canceled), upstream.Failure{Kind: upstream.KindCanceled}},
		{"canceled inside a url.Error", &url.Error{Op: "Get", URL: "http://r.test/v2/", Err: context.Canceled}, upstream.Failure{Kind: upstream.KindCanceled}},
		{"refused", refused, upstream.Failure{Kind: upstream.KindNetwork}},
		{"name not resolved", &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "r.test", IsNotFound: true}}, upstream.Failure{Kind: upstream.KindNetwork}},
		{"a body cut short", fmt.Errorf("read manifest: %w", io.ErrUnexpectedEOF), upstream.Failure{Kind: upstream.KindNetwork}},
		{"certificate", &url.Error{Op: "Get", URL: "https://r.test/v2/", Err: x509.UnknownAuthorityError{}}, upstream.Failure{Kind: upstream.KindTLS}},
		{"certificate marked", fmt.Errorf("%w: x", upstream.ErrUntrustedCertificate), upstream.Failure{Kind: upstream.KindTLS}},
		{"handshake", fmt.Errorf("%w: x", upstream.ErrHandshake), upstream.Failure{Kind: upstream.KindHandshake}},
		{"anything else", errors.New("odd"), upstream.Failure{Kind: upstream.KindOther}},
		// What the Client decided where it made the error wins over its chain.
		{"the Client's word", &upstream.Error{Registry: "docker.io", Failure: upstream.Failure{Kind: upstream.KindHandshake}, Err: refused},
			upstream.Failure{Kind: upstream.KindHandshake}},
	}
	for _, tt := range tests {
		if got := upstream.FailureOf(tt.err); got != tt.want {
			t.Errorf("%s: FailureOf(%v) = %v %d, want %v %d", tt.name, tt.err, got.Kind, got.Status, tt.want.Kind, tt.want.Status)
		}
	}
}

// TestClientClassifiesWhereItFails drives real failures through a Client and
// checks the Failure on the error it returns, its health, and what an
// Observer heard: one classification, read in three places.
func TestClientClassifiesWhereItFails(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // nothing listens there any more: connections are refused
	selfSigned := httptest.NewTLSServer(http.NotFoundHandler())
	defer selfSigned.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer failing.Close()

	tests := []struct {
		name   string
		url    string
		want   upstream.Failure
		reason string // Health().Reason, "" while up
	}{
		{"refused", closed.URL, upstream.Failure{Kind: upstream.KindNetwork}, "network"},
		{"untrusted certificate", selfSigned.URL, upstream.Failure{Kind: upstream.KindTLS}, ""},
		{"502", failing.URL, upstream.Failure{Kind: upstream.KindStatus, Status: http.StatusBadGateway}, "server_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{received: map[string]int{}}
			c, err := upstream.New(upstream.Options{Name: "r.test", URL: tt.url, Timeout: 5 * time.Second, Observer: rec, ProbeMin: time.Hour}, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, err = c.Tags(t.Context(), "app", "", "")
			ue, ok := errors.AsType[*upstream.Error](err)
			if !ok || ue.Failure != tt.want {
				t.Fatalf("Tags: %v, want an *upstream.Error of %v %d", err, tt.want.Kind, tt.want.Status)
			}
			if h := c.Health(); h.Up != (tt.reason == "") || h.Reason != tt.reason {
				t.Errorf("Health() = %+v, want reason %q", h, tt.reason)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if want := "r.test tags " + tt.want.Reason(); len(rec.answers) != 1 || rec.answers[0] != want {
				t.Errorf("observer heard %q, want %q", rec.answers, want)
			}
		})
	}
}
