//go:build linux

package test

// Helpers for clients_test.go: the image real clients pull, reading the
// mirror's access log, and running client daemons so that they bind nothing
// but loopback and leave nothing behind.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// clientProxyEnv points every proxy variable at a closed port, so a client
// or daemon that falls back from the mirror to the real Docker Hub fails at
// once instead of leaving the machine.
var clientProxyEnv = []string{
	"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=127.0.0.1,localhost,::1",
	"http_proxy=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9", "no_proxy=127.0.0.1,localhost,::1",
}

// clientEnv is the test's environment with the proxy variables replaced by
// clientProxyEnv, plus extra.
func clientEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, clientProxyEnv...), extra...)
}

// requireClients reports whether a missing client is a failure rather than
// a skip. CI sets REGMIRROR_REQUIRE_CLIENTS=1 after running .ci/clients.sh.
func requireClients() bool { return os.Getenv("REGMIRROR_REQUIRE_CLIENTS") == "1" }

// lookClient returns the path of each named binary (a name with a slash is
// taken as it is), or skips the test when one is missing: fails it instead
// when REGMIRROR_REQUIRE_CLIENTS=1.
func lookClient(t *testing.T, names ...string) []string {
	t.Helper()
	var paths, missing []string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			missing = append(missing, n)
			continue
		}
		paths = append(paths, p)
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("client binaries not installed: %s (bash .ci/clients.sh and bash .ci/conformance.sh install them)", strings.Join(missing, ", "))
		if requireClients() {
			t.Fatal(msg + "; REGMIRROR_REQUIRE_CLIENTS=1 makes this a failure")
		}
		t.Skip(msg)
	}
	return paths
}

// shortTempDir is a fresh directory under /tmp with a short path (unix
// socket paths are limited to 108 bytes, and t.TempDir's carry the test's
// name). It is removed when the test ends, after anything registered later
// with t.Cleanup (the daemons using it) has run; a process still mentioning
// it then is an error.
func shortTempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rm-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range pidsMentioning(dir) {
			t.Errorf("process %d (%s) is still running and uses %s", pid, cmdline(pid), dir)
			syscall.Kill(pid, syscall.SIGKILL) // ours: it names our temp dir
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// writeConfig copies one of the client configurations in testdata/clients
// (the team's known-good configurations for this machine) to dst, with
// TESTDIR replaced by testDir and the documented mirror address by mirrorAddr.
func writeConfig(t *testing.T, rel, dst, testDir, mirrorAddr string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "clients", rel))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "TESTDIR", testDir)
	s = strings.ReplaceAll(s, "127.0.0.1:5002", mirrorAddr)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runClient runs a client command with the proxy environment and a time
// limit, and returns its combined output, failing the test on error.
func runClient(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// --- the image ---

// platformImage is the content of one platform's image, by digest.
type platformImage struct {
	arch     string
	manifest v1.Hash
	config   v1.Hash
	layers   []v1.Hash
}

// blobs is the config and the layers: what a pull of this platform GETs.
func (p platformImage) blobs() []v1.Hash { return append([]v1.Hash{p.config}, p.layers...) }

// seededImage is library/small:latest as seeded upstream: an OCI index of
// a linux/amd64 and a linux/arm64 image.
type seededImage struct {
	index v1.Hash
	amd64 platformImage
	arm64 platformImage
}

// labels names every digest of the image, to print request paths readably.
func (s *seededImage) labels() map[string]string {
	l := map[string]string{s.index.String(): "<index>"}
	for _, p := range []platformImage{s.amd64, s.arm64} {
		l[p.manifest.String()] = "<" + p.arch + " manifest>"
		l[p.config.String()] = "<" + p.arch + " config>"
		for i, d := range p.layers {
			l[d.String()] = fmt.Sprintf("<%s layer %d>", p.arch, i+1)
		}
	}
	return l
}

// seedSmall pushes library/small:latest to the upstream: a multi-platform
// index of two small but real images (gzip tar layers, a config naming the
// platform and a command), each platform's layers different.
func seedSmall(t *testing.T, up *upstreamServer) *seededImage {
	t.Helper()
	s := &seededImage{}
	var adds []mutate.IndexAddendum
	for _, p := range []struct {
		plat *v1.Platform
		out  *platformImage
	}{
		{&v1.Platform{OS: "linux", Architecture: "amd64"}, &s.amd64},
		{&v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, &s.arm64},
	} {
		img := platformSmall(t, p.plat)
		*p.out = describe(t, img, p.plat)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p.plat}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s.index = d
	if err := remote.WriteIndex(ref(t, up.Host(), "library/small:latest"), idx); err != nil {
		t.Fatalf("seed upstream: %v", err)
	}
	return s
}

func platformSmall(t *testing.T, plat *v1.Platform) v1.Image {
	t.Helper()
	p := plat.String()
	noise := make([]byte, 512<<10) // incompressible: the second layer is a real half-MiB download
	rand.Read(noise)
	base := layerOf(t,
		tarEntry{name: "etc/", dir: true},
		tarEntry{name: "etc/small-release", body: "NAME=small\nPLATFORM=" + p + "\n"},
		tarEntry{name: "hello", mode: 0o755, body: "#!/bin/sh\necho hello from small " + p + "\n"},
	)
	data := layerOf(t,
		tarEntry{name: "usr/", dir: true}, tarEntry{name: "usr/share/", dir: true},
		tarEntry{name: "usr/share/small/", dir: true},
		tarEntry{name: "usr/share/small/noise", body: string(noise)},
	)
	cfg := &v1.ConfigFile{
		Created:      v1.Time{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		OS:           plat.OS,
		Architecture: plat.Architecture,
		Variant:      plat.Variant,
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Cmd: []string{"/hello"},
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, data)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

type tarEntry struct {
	name, body string
	mode       int64
	dir        bool
}

// layerOf makes a gzip-compressed OCI layer of the entries.
func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg,
			ModTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Format: tar.FormatPAX}
		if e.mode != 0 {
			h.Mode = e.mode
		}
		if e.dir {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func describe(t *testing.T, img v1.Image, plat *v1.Platform) platformImage {
	t.Helper()
	p := platformImage{arch: plat.Architecture}
	var err error
	if p.manifest, err = img.Digest(); err != nil {
		t.Fatal(err)
	}
	if p.config, err = img.ConfigName(); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		p.layers = append(p.layers, d)
	}
	return p
}

// --- the access log ---

// accessLine is one access-log line of the mirror.
type accessLine struct {
	Msg    string `json:"msg"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Status int    `json:"status"`
	Cache  string `json:"cache"`
	Digest string `json:"digest"`
	Bytes  int64  `json:"bytes"`
}

// accessSince returns the access-log lines logged after mark (m.log.Len()).
func accessSince(m *mirrorProc, mark int) []accessLine {
	var out []accessLine
	for _, l := range m.log.Lines(mark) {
		var a accessLine
		if json.Unmarshal([]byte(l), &a) == nil && a.Msg == "request" {
			out = append(out, a)
		}
	}
	return out
}

// waitAccess waits until the access log after mark has a GET of every
// digest in want: a handler's log line is written just after its response,
// so it may come a moment after the client is done.
func waitAccess(t *testing.T, m *mirrorProc, mark int, want []v1.Hash) []accessLine {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, h := range want {
		_, err := m.log.Wait(ctx, mark, func(rec map[string]any) bool {
			path, _ := rec["path"].(string)
			return rec["msg"] == "request" && rec["method"] == http.MethodGet && strings.HasSuffix(path, "/"+h.String())
		})
		if err != nil {
			t.Fatalf("the mirror's access log has no GET of %s (%v); it has:\n%s", h, err, m.Logs())
		}
	}
	return accessSince(m, mark)
}

// upstreamDelta is what the upstream was asked since before, by "METHOD /path".
func upstreamDelta(u *upstreamServer, before map[string]int) map[string]int {
	d := map[string]int{}
	for k, v := range u.Snapshot() {
		if n := v - before[k]; n > 0 {
			d[k] = n
		}
	}
	return d
}

// --- daemons ---

// daemon is a client daemon (containerd, dockerd) started by a test, in its
// own process group, killed if the test binary dies.
type daemon struct {
	name   string
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

// startDaemon starts bin with args, logging to logPath, and stops it when
// the test ends (SIGTERM, then SIGKILL to its process group).
func startDaemon(t *testing.T, logPath string, env []string, bin string, args ...string) *daemon {
	t.Helper()
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	d := &daemon{name: filepath.Base(bin), cmd: cmd, log: lf, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("%s log (last 8 KiB):\n%s", d.name, tail(logPath, 8<<10))
		}
		lf.Close()
	})
	return d
}

func (d *daemon) stop(t *testing.T) {
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("%s did not exit within 20s of SIGTERM; killing its process group", d.name)
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
}

// waitReady waits until ready returns nil, failing if the daemon exits or
// takes longer than 30s.
func (d *daemon) waitReady(t *testing.T, logPath string, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready()
		if err == nil {
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", d.name, d.cmd.ProcessState, tail(logPath, 4<<10))
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30s: %v\n%s", d.name, err, tail(logPath, 4<<10))
		}
	}
}

func tail(path string, n int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// dialUnix reports whether something accepts connections on a unix socket.
func dialUnix(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// --- processes and sockets ---

// descendants returns pid and every process below it.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut after the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// pidsMentioning returns the processes whose command line contains s.
func pidsMentioning(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == os.Getpid() {
			continue
		}
		if strings.Contains(cmdline(p), s) {
			out = append(out, p)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// inetSocket is a TCP socket in LISTEN state or a bound UDP socket.
type inetSocket struct {
	proto string
	addr  net.IP
	port  int
}

// assertLoopbackOnly fails the test if pid or a process below it listens
// on TCP, or has a bound UDP socket, on an address other than loopback. It
// returns how many such sockets it saw.
func assertLoopbackOnly(t *testing.T, what string, pid int) int {
	t.Helper()
	inodes := map[string]bool{}
	for _, p := range descendants(pid) {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, fd := range fds {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name()))
			if err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	var bad []string
	socks := inetSockets(t, inodes)
	for _, s := range socks {
		if !s.addr.IsLoopback() {
			bad = append(bad, fmt.Sprintf("%s %s", s.proto, net.JoinHostPort(s.addr.String(), strconv.Itoa(s.port))))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s (pid %d) binds outside loopback: %s", what, pid, strings.Join(bad, ", "))
	}
	return len(socks)
}

// inetSockets reads /proc/net/{tcp,tcp6,udp,udp6} for the given socket
// inodes: TCP sockets that listen and UDP sockets that are bound.
func inetSockets(t *testing.T, inodes map[string]bool) []inetSocket {
	t.Helper()
	var out []inetSocket
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile("/proc/net/" + proto)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			if strings.HasPrefix(proto, "tcp") && f[3] != "0A" { // 0A: LISTEN
				continue
			}
			host, port, _ := strings.Cut(f[1], ":")
			ip, err := procIP(host)
			if err != nil {
				t.Fatalf("/proc/net/%s: %v", proto, err)
			}
			pn, _ := strconv.ParseInt(port, 16, 32)
			out = append(out, inetSocket{proto, ip, int(pn)})
		}
	}
	return out
}

// procIP decodes an address of /proc/net/tcp: 32-bit words in host (little
// endian) order.
func procIP(s string) (net.IP, error) {
	b, err := hex.DecodeString(s)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return nil, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return net.IP(b), nil
}

// removeIfCreated removes dir when the test ends if it does not exist now,
// and then each of its parents that did not exist either, if empty. podman
// and skopeo as root create /var/lib/containers/cache whatever their
// configuration says.
func removeIfCreated(t *testing.T, dir string) {
	t.Helper()
	var absent []string // dir, then its absent parents upwards
	for p := dir; p != "/" && p != "."; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		absent = append(absent, p)
	}
	if len(absent) == 0 {
		return
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(absent[0]); err != nil {
			t.Errorf("remove %s: %v", absent[0], err)
		}
		for _, p := range absent[1:] {
			os.Remove(p) // only if empty: something else may have come to live there
		}
	})
}
