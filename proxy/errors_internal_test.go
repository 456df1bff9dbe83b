package proxy

// An internal test: toOCI is the one place that decides what a client is
// told, and failures of the network and of the local disk have to be told
// apart from the error values alone, as the handlers hand them over.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
)

func TestToOCITellsNetworkFailuresFromStoreFailures(t *testing.T) {
	const file = "/var/lib/regmirror/tmp/0123456789abcdef-42"
	dial := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		name   string
		err    error
		status int
		code   string
		says   string
	}{
		{"connection refused", &url.Error{Op: "Get", URL: "http://registry.test/v2/", Err: dial(syscall.ECONNREFUSED)},
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream is unreachable"},
		{"connection refused, from the upstream client", &upstream.Error{Registry: "docker.io", Err: dial(syscall.ECONNREFUSED)},
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream docker.io is unreachable"},
		{"reset mid-blob", fmt.Errorf("download x: %w", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}),
			http.StatusServiceUnavailable, "UNAVAILABLE", "unreachable"},
		{"name not resolved", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "registry.test", IsNotFound: true}},
			http.StatusServiceUnavailable, "UNAVAILABLE", "unreachable"},
		{"write fails with EIO", fmt.Errorf("write blob x: %w", &fs.PathError{Op: "write", Path: file, Err: syscall.EIO}),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		{"temp dir is a file", fmt.Errorf("create temp file for x: %w", &fs.PathError{Op: "open", Path: file, Err: syscall.ENOTDIR}),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		{"read-only disk", fmt.Errorf("rename blob x into place: %w", &os.LinkError{Op: "rename", Old: file, New: file + "-final", Err: syscall.EROFS}),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		{"permission denied", fmt.Errorf("create dir: %w", &fs.PathError{Op: "mkdir", Path: file, Err: syscall.EACCES}),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		{"disk full mid-write", fmt.Errorf("write blob x: %w: %w", cache.ErrNoSpace, &fs.PathError{Op: "write", Path: file, Err: syscall.ENOSPC}),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		{"bare errno", fmt.Errorf("statfs: %w", syscall.EIO),
			http.StatusInternalServerError, "UNKNOWN", "cache store failed"},
		// A file error inside the upstream client is not the store's either.
		{"file error from the upstream client", &upstream.Error{Registry: "docker.io", Err: &fs.PathError{Op: "open", Path: file, Err: syscall.EACCES}},
			http.StatusInternalServerError, "UNKNOWN", "internal error"},
		{"anything else", errors.New("odd"), http.StatusInternalServerError, "UNKNOWN", "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oe := toOCI(tt.err, routeBlob)
			if oe.status != tt.status || oe.code != tt.code || !strings.Contains(oe.message, tt.says) {
				t.Errorf("toOCI(%v) = %d %s %q, want %d %s saying %q", tt.err, oe.status, oe.code, oe.message, tt.status, tt.code, tt.says)
			}
			if strings.Contains(oe.message, file) {
				t.Errorf("toOCI(%v): message %q names a file of the store", tt.err, oe.message)
			}
		})
	}
}

// TestToOCIByKind is the table of what a client is told for each kind of
// upstream failure and for the cache's sentinels, as the handlers hand them
// over: wrapped, and from the upstream client where it made them.
func TestToOCIByKind(t *testing.T) {
	fail := func(f upstream.Failure, err error) error {
		return fmt.Errorf("fetch manifest: %w", &upstream.Error{Registry: "docker.io", Failure: f, Err: err, RetryAfter: "60"})
	}
	status := func(code int) error {
		return fail(upstream.Failure{Kind: upstream.KindStatus, Status: code}, errors.New("answered"))
	}
	tests := []struct {
		name   string
		err    error
		route  routeKind
		status int
		code   string
		says   string
	}{
		{"down", fail(upstream.Failure{Kind: upstream.KindDown}, upstream.ErrDown), routeManifest,
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream docker.io is unreachable"},
		{"timeout", fail(upstream.Failure{Kind: upstream.KindTimeout}, errors.New("deadline")), routeManifest,
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream docker.io is unreachable"},
		{"network", fail(upstream.Failure{Kind: upstream.KindNetwork}, errors.New("refused")), routeManifest,
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream docker.io is unreachable"},
		{"tls", fail(upstream.Failure{Kind: upstream.KindTLS}, upstream.ErrUntrustedCertificate), routeManifest,
			http.StatusBadGateway, "UNAVAILABLE", "REGMIRROR_INSECURE_REGISTRIES, or add its CA to REGMIRROR_CA_FILE"},
		{"handshake", fail(upstream.Failure{Kind: upstream.KindHandshake}, fmt.Errorf("%w: token server on a private address", upstream.ErrHandshake)), routeManifest,
			http.StatusBadGateway, "UNAVAILABLE", "upstream docker.io: token handshake failed: token server on a private address"},
		{"canceled", fail(upstream.Failure{Kind: upstream.KindCanceled}, context.Canceled), routeManifest,
			http.StatusServiceUnavailable, "UNAVAILABLE", "request canceled"},
		{"other", fail(upstream.Failure{Kind: upstream.KindOther}, errors.New("odd")), routeManifest,
			http.StatusInternalServerError, "UNKNOWN", "internal error"},
		{"404 of a manifest", status(http.StatusNotFound), routeManifest,
			http.StatusNotFound, "MANIFEST_UNKNOWN", "upstream docker.io answered 404 Not Found"},
		{"404 of a blob", status(http.StatusNotFound), routeBlob, http.StatusNotFound, "BLOB_UNKNOWN", "404 Not Found"},
		{"404 of a tag list", status(http.StatusNotFound), routeTags, http.StatusNotFound, "NAME_UNKNOWN", "404 Not Found"},
		{"401", status(http.StatusUnauthorized), routeManifest,
			http.StatusUnauthorized, "UNAUTHORIZED", "the repository is private or does not exist"},
		{"401 to our credentials", fmt.Errorf("x: %w", &upstream.Error{Registry: "docker.io", WithCredentials: true,
			Failure: upstream.Failure{Kind: upstream.KindStatus, Status: http.StatusUnauthorized}, Err: errors.New("answered")}), routeManifest,
			http.StatusUnauthorized, "UNAUTHORIZED", "refused this mirror's credentials for it: check REGMIRROR_CREDENTIALS_FILE"},
		{"403", status(http.StatusForbidden), routeManifest, http.StatusForbidden, "DENIED", "403 Forbidden"},
		{"429", status(http.StatusTooManyRequests), routeManifest, http.StatusTooManyRequests, "TOOMANYREQUESTS", "429 Too Many Requests"},
		{"503", status(http.StatusServiceUnavailable), routeManifest,
			http.StatusServiceUnavailable, "UNAVAILABLE", "upstream docker.io answered 503 Service Unavailable"},
		{"418", status(http.StatusTeapot), routeManifest, http.StatusBadGateway, "UNKNOWN", "418 I'm a teapot"},
		{"not in the cache", fmt.Errorf("open: %w", cache.ErrNotFound), routeBlob, http.StatusNotFound, "BLOB_UNKNOWN", "not found"},
		{"digest mismatch", fmt.Errorf("commit: %w", cache.ErrDigestMismatch), routeBlob,
			http.StatusBadGateway, "UNKNOWN", "sent content that does not match its digest"},
		{"size mismatch", fmt.Errorf("commit: %w", cache.ErrSizeMismatch), routeBlob,
			http.StatusBadGateway, "UNKNOWN", "sent content that does not match its digest"},
		{"invalid upstream answer", fmt.Errorf("manifest: %w", errUpstreamInvalid), routeManifest,
			http.StatusBadGateway, "UNKNOWN", "sent content that does not match its digest"},
		{"an OCI error as it is", errNameInvalid("bad name"), routeManifest, http.StatusBadRequest, "NAME_INVALID", "bad name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oe := toOCI(tt.err, tt.route)
			if oe.status != tt.status || oe.code != tt.code || !strings.Contains(oe.message, tt.says) {
				t.Errorf("toOCI(%v) = %d %s %q, want %d %s saying %q", tt.err, oe.status, oe.code, oe.message, tt.status, tt.code, tt.says)
			}
			if want := map[bool]string{true: "60"}[oe.status == http.StatusTooManyRequests]; oe.retryAfter != want {
				t.Errorf("toOCI(%v): Retry-After %q, want %q", tt.err, oe.retryAfter, want)
			}
		})
	}
}

// TestEveryKindHasAnAnswer keeps the table whole when a kind is added.
func TestEveryKindHasAnAnswer(t *testing.T) {
	for k := upstream.KindOther; k.String() != fmt.Sprintf("Kind(%d)", k); k++ {
		if a, ok := kindAnswers[k]; k != upstream.KindStatus && (!ok || a.status < 400 || a.code == "") {
			t.Errorf("kind %v: answer %+v, want a status and a code in kindAnswers", k, a)
		}
	}
}
