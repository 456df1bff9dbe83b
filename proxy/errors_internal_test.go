package proxy

// An internal test: toOCI is the one place that decides what a client is
// told, and failures of the network and of the local disk have to be told
// apart from the error values alone, as the handlers hand them over.

import (
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
