//go:build linux

package test

// Real clients — skopeo, podman, containerd's ctr, the Docker daemon and
// crane — pull library/small:latest through the real regmirror binary, each
// configured as in testdata/clients (copies of the team's known-good
// configurations for this machine). A missing client is skipped, or
// fails the test when REGMIRROR_REQUIRE_CLIENTS=1 (CI runs .ci/clients.sh
// first and sets it).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/regmirror/regmirror/test/regtest"
)

// puller pulls docker.io/library/small:latest through the mirror m into a
// fresh local store of the client, and returns the config digest of the
// image the client ended up with (its image ID).
type puller func(t *testing.T, m *mirrorProc) v1.Hash

// clientCase sets a client up (finds its binaries, skipping if they are
// missing) and returns its puller.
type clientCase struct {
	name  string
	setup func(t *testing.T, tc *clientsTest) puller
}

// clientsTest is what every client's subtest shares: the upstream, the
// image on it, and a mirror that already holds the image.
type clientsTest struct {
	up    *upstreamServer
	img   *seededImage
	warm  *mirrorProc
	crane func(t *testing.T) string // path of a crane binary, built once
}

// mirrorTagTTL is the mirrors' extra setting: a tag answer stays fresh for the
// whole test, so a warm mirror must not ask upstream anything.
const mirrorTagTTL = "REGMIRROR_TAG_TTL=1h"

func TestClients(t *testing.T) {
	start := time.Now()
	tc := &clientsTest{up: startUpstream(t, nil)}
	tc.img = seedSmall(t, tc.up)
	tc.crane = buildCrane(t) // in the background, while the other clients run

	// The warm mirror is filled by an in-process go-containerregistry pull;
	// then every client pulls through it too, so each one is a second client
	// of that mirror and must cost upstream nothing.
	tc.warm = startMirror(t, tc.up.URL, "", mirrorTagTTL)
	checkPull(t, tc, tc.warm, "ggcr warm-up", true, func(t *testing.T, m *mirrorProc) v1.Hash {
		img, err := remote.Image(ref(t, m.Host(), "library/small:latest"))
		if err != nil {
			t.Fatal(err)
		}
		regtest.ReadImage(t, img)
		d, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return d
	})

	for _, c := range []clientCase{
		{"skopeo", skopeoClient},
		{"podman", podmanClient},
		{"containerd", containerdClient},
		{"docker", dockerClient},
		{"crane", craneClient},
	} {
		t.Run(c.name, func(t *testing.T) {
			pull := c.setup(t, tc)
			// A cold mirror of its own: the client's requests fill it (misses),
			// and the upstream sends each blob of linux/amd64 once.
			cold := startMirror(t, tc.up.URL, "", mirrorTagTTL)
			checkPull(t, tc, cold, "cold mirror", true, pull)
			// The same client again, from a fresh local store: all hits now.
			checkPull(t, tc, cold, "same mirror again", false, pull)
			// The shared mirror that other clients filled: all hits as well.
			checkPull(t, tc, tc.warm, "mirror filled by other clients", false, pull)
			assertMirrorLoopback(t, cold)
		})
	}
	assertMirrorLoopback(t, tc.warm)
	t.Logf("all clients: %v", time.Since(start).Round(time.Millisecond))
}

// checkPull runs one pull through m and checks what the client got, what the
// mirror logged and what the upstream was asked. A cold pull must miss the
// cache and fetch each blob of linux/amd64 from upstream exactly once; a warm
// one must be served from the cache without asking upstream anything.
// Neither may touch linux/arm64.
func checkPull(t *testing.T, tc *clientsTest, m *mirrorProc, what string, cold bool, pull puller) {
	t.Helper()
	img := tc.img
	before, mark := tc.up.Snapshot(), m.log.Len()
	start := time.Now()
	got := pull(t, m)
	took := time.Since(start)
	if got != img.amd64.config {
		t.Errorf("%s: the client has config %s, want linux/amd64's %s (arm64's is %s)", what, got, img.amd64.config, img.arm64.config)
	}
	lines := waitAccess(t, m, mark, img.amd64.blobs())
	labels := img.labels()
	label := func(p string) string {
		for d, l := range labels {
			p = strings.ReplaceAll(p, d, l)
		}
		return p
	}
	var seq []string
	for _, a := range lines {
		p := label(a.Path)
		seq = append(seq, strings.TrimSpace(fmt.Sprintf("%s %s %d %s", a.Method, p, a.Status, a.Cache)))
		if a.Status >= 400 {
			t.Errorf("%s: %s %s: status %d", what, a.Method, a.Path, a.Status)
		}
		for _, d := range append(img.arm64.blobs(), img.arm64.manifest) {
			if strings.HasSuffix(a.Path, "/"+d.String()) {
				t.Errorf("%s: the client asked for linux/arm64 content: %s %s", what, a.Method, p)
			}
		}
		if !cold && a.Cache != "" && a.Cache != "hit" {
			t.Errorf("%s: %s %s: cache %q, want hit", what, a.Method, p, a.Cache)
		}
	}
	t.Logf("%s: done in %v; the mirror's access log:\n\t%s", what, took.Round(time.Millisecond), strings.Join(seq, "\n\t"))

	delta := upstreamDelta(tc.up, before)
	blobPath := "/v2/library/small/blobs/"
	for k := range delta {
		for _, d := range append(img.arm64.blobs(), img.arm64.manifest) {
			if strings.HasSuffix(k, "/"+d.String()) {
				t.Errorf("%s: the mirror asked upstream for linux/arm64 content: %s", what, k)
			}
		}
	}
	var asked []string
	for k, n := range delta {
		asked = append(asked, fmt.Sprintf("%s ×%d", label(k), n))
	}
	slices.Sort(asked)
	if !cold {
		if n := countPrefixIn(delta, "GET "+blobPath); n > 0 {
			t.Errorf("%s: the upstream got %d blob GETs, want none: the image is in the mirror's cache", what, n)
		}
		if len(asked) > 0 {
			t.Errorf("%s: a warm mirror asked upstream: %s; want nothing (the tag answer is fresh for an hour)", what, strings.Join(asked, ", "))
		}
		return
	}
	t.Logf("%s: the upstream was asked: %s", what, strings.Join(asked, ", "))
	for _, d := range img.amd64.blobs() {
		if n := delta["GET "+blobPath+d.String()]; n != 1 {
			t.Errorf("%s: the upstream got %d GETs of %s, want 1", what, n, labels[d.String()])
		}
		i := slices.IndexFunc(lines, func(a accessLine) bool {
			return a.Method == http.MethodGet && strings.HasSuffix(a.Path, "/"+d.String())
		})
		if c := lines[i].Cache; c != "miss" && c != "coalesced" {
			t.Errorf("%s: first GET of %s: cache %q, want miss", what, labels[d.String()], c)
		}
	}
}

// assertMirrorLoopback checks that the mirror listens, and on loopback only.
func assertMirrorLoopback(t *testing.T, m *mirrorProc) {
	t.Helper()
	if n := assertLoopbackOnly(t, "regmirror", m.cmd.Process.Pid); n == 0 {
		t.Errorf("found no listening socket of regmirror (pid %d) in /proc/net: the loopback check sees nothing", m.cmd.Process.Pid)
	}
}

func countPrefixIn(counts map[string]int, prefix string) int {
	n := 0
	for k, v := range counts {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

// --- skopeo ---

func skopeoClient(t *testing.T, _ *clientsTest) puller {
	bin := lookClient(t, "skopeo")[0]
	removeIfCreated(t, "/var/lib/containers/cache")
	return func(t *testing.T, m *mirrorProc) v1.Hash {
		dir := shortTempDir(t, "skopeo")
		conf := filepath.Join(dir, "registries.conf")
		writeConfig(t, "containers/registries.conf", conf, dir, m.Addr)
		tmp := filepath.Join(dir, "tmp")
		os.Mkdir(tmp, 0o755)
		runClient(t, clientEnv("TMPDIR="+tmp), bin, "--registries-conf", conf, "--insecure-policy", "--tmpdir", tmp,
			"copy", "docker://docker.io/library/small:latest", "oci:"+filepath.Join(dir, "oci")+":small:latest")
		return ociLayoutConfig(t, filepath.Join(dir, "oci"), "small:latest")
	}
}

// ociLayoutConfig returns the config digest of the image tagged tag in the
// OCI layout at dir.
func ociLayoutConfig(t *testing.T, dir, tag string) v1.Hash {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatalf("%s in %s is not an image: %v", tag, dir, err)
		}
		h, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	t.Fatalf("no %s in the OCI layout %s: %+v", tag, dir, im.Manifests)
	return v1.Hash{}
}

// --- podman ---

func podmanClient(t *testing.T, _ *clientsTest) puller {
	bin := lookClient(t, "podman")[0]
	removeIfCreated(t, "/var/lib/containers/cache")
	return func(t *testing.T, m *mirrorProc) v1.Hash {
		dir := shortTempDir(t, "podman")
		regs, storage := filepath.Join(dir, "registries.conf"), filepath.Join(dir, "storage.conf")
		writeConfig(t, "containers/registries.conf", regs, dir, m.Addr)
		writeConfig(t, "containers/storage.conf", storage, dir, m.Addr)
		tmp := filepath.Join(dir, "tmp")
		os.Mkdir(tmp, 0o755)
		env := clientEnv("CONTAINERS_REGISTRIES_CONF="+regs, "CONTAINERS_STORAGE_CONF="+storage, "TMPDIR="+tmp)
		podman := func(args ...string) string {
			return runClient(t, env, bin, append([]string{"--cgroup-manager", "cgroupfs", "--events-backend", "none",
				"--tmpdir", tmp}, args...)...)
		}
		podman("pull", "docker.io/library/small:latest")
		out := podman("image", "inspect", "--format", "{{.Id}} {{.Os}}/{{.Architecture}}", "docker.io/library/small:latest")
		return imageID(t, "podman", out, "sha256:") // podman prints the bare hex
	}
}

// imageID parses "<id> os/arch" as podman and docker print it, and returns
// the ID as a digest.
func imageID(t *testing.T, client, out, prefix string) v1.Hash {
	t.Helper()
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("%s image inspect: %q", client, out)
	}
	if f[1] != "linux/amd64" {
		t.Errorf("%s has an image for %s, want linux/amd64", client, f[1])
	}
	h, err := v1.NewHash(prefix + f[0])
	if err != nil {
		t.Fatalf("%s image inspect: %q: %v", client, out, err)
	}
	return h
}

// --- containerd ---

func containerdClient(t *testing.T, tc *clientsTest) puller {
	bins := lookClient(t, "containerd", "ctr")
	containerd, ctrBin := bins[0], bins[1]
	return func(t *testing.T, m *mirrorProc) v1.Hash {
		dir := shortTempDir(t, "ctrd")
		conf := filepath.Join(dir, "config.toml")
		writeConfig(t, "containerd/config.toml", conf, dir, m.Addr)
		hosts := filepath.Join(dir, "certs.d")
		writeConfig(t, "containerd/certs.d/docker.io/hosts.toml", filepath.Join(hosts, "docker.io", "hosts.toml"), dir, m.Addr)
		logPath := filepath.Join(dir, "containerd.log")
		d := startDaemon(t, logPath, clientEnv(), containerd, "--config", conf)
		sock := filepath.Join(dir, "containerd", "containerd.sock")
		d.waitReady(t, logPath, func() error { return dialUnix(sock) })
		ctr := func(args ...string) string {
			return runClient(t, clientEnv(), ctrBin, append([]string{"--address", sock, "-n", "test"}, args...)...)
		}
		start := time.Now()
		ctr("image", "pull", "--hosts-dir", hosts, "docker.io/library/small:latest")
		t.Logf("ctr image pull: %v", time.Since(start).Round(time.Millisecond))
		if out := ctr("image", "ls"); !strings.Contains(out, tc.img.index.String()) {
			t.Errorf("ctr image ls does not show the index %s:\n%s", tc.img.index, out)
		}
		content := strings.Fields(ctr("content", "ls", "-q"))
		assertLoopbackOnly(t, "containerd", d.cmd.Process.Pid)
		d.stop(t)
		// ctr pulls and unpacks the host's platform only: its config is the
		// one in the content store.
		var got []v1.Hash
		for _, h := range []v1.Hash{tc.img.amd64.config, tc.img.arm64.config} {
			if slices.Contains(content, h.String()) {
				got = append(got, h)
			}
		}
		if len(got) != 1 {
			t.Fatalf("containerd's content store holds configs %v, want linux/amd64's alone; content: %v", got, content)
		}
		return got[0]
	}
}

// --- docker ---

func dockerClient(t *testing.T, _ *clientsTest) puller {
	// Debian's docker.io ships /usr/bin/docker; a newer CLI elsewhere on
	// PATH talks to it too, but the daemon's own is the safe pair.
	cli := "docker"
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		cli = "/usr/bin/docker"
	}
	bins := lookClient(t, "dockerd", cli)
	dockerd, docker := bins[0], bins[1]
	// Whatever its flags say, dockerd writes its trust key to
	// /etc/docker/key.json and makes /run/docker/plugins.
	removeIfCreated(t, "/etc/docker/key.json")
	removeIfCreated(t, "/run/docker/plugins")
	return func(t *testing.T, m *mirrorProc) v1.Hash {
		dir := shortTempDir(t, "dockerd")
		conf := filepath.Join(dir, "daemon.json")
		writeConfig(t, "docker/daemon.json", conf, dir, m.Addr)
		sock := filepath.Join(dir, "docker.sock")
		logPath := filepath.Join(dir, "dockerd.log")
		d := startDaemon(t, logPath, clientEnv(), dockerd, "--config-file", conf,
			"--data-root", filepath.Join(dir, "root"), "--exec-root", filepath.Join(dir, "exec"),
			"--pidfile", filepath.Join(dir, "docker.pid"), "-H", "unix://"+sock)
		d.waitReady(t, logPath, func() error { return dockerPing(t, sock) })
		env := clientEnv("DOCKER_CONFIG=" + filepath.Join(dir, "cli"))
		start := time.Now()
		runClient(t, env, docker, "-H", "unix://"+sock, "pull", "small")
		t.Logf("docker pull: %v", time.Since(start).Round(time.Millisecond))
		out := runClient(t, env, docker, "-H", "unix://"+sock, "image", "inspect", "--format", "{{.Id}} {{.Os}}/{{.Architecture}}", "small")
		assertLoopbackOnly(t, "dockerd", d.cmd.Process.Pid)
		d.stop(t)
		return imageID(t, "docker", out, "")
	}
}

// dockerPing asks the daemon's /_ping over its socket.
func dockerPing(t *testing.T, sock string) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://docker/_ping", nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/_ping: status %d", resp.StatusCode)
	}
	return nil
}

// --- crane ---

func craneClient(t *testing.T, tc *clientsTest) puller {
	bin := tc.crane(t)
	return func(t *testing.T, m *mirrorProc) v1.Hash {
		out := filepath.Join(t.TempDir(), "small.tar")
		runClient(t, clientEnv(), bin, "pull", "--insecure", m.Addr+"/library/small:latest", out)
		img, err := tarball.ImageFromPath(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		h, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
}

// buildCrane starts building crane (go install of the go-containerregistry
// version this module requires) unless one is on PATH, and returns a
// function that waits for it. A failed build skips the crane test, or fails
// it when REGMIRROR_REQUIRE_CLIENTS=1.
func buildCrane(t *testing.T) func(t *testing.T) string {
	if p, err := exec.LookPath("crane"); err == nil {
		return func(*testing.T) string { return p }
	}
	// The version this module requires, so that the build needs nothing new.
	v, verr := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/google/go-containerregistry").Output()
	version := strings.TrimSpace(string(v))
	dir := shortTempDir(t, "crane")
	var (
		built sync.WaitGroup
		out   []byte
		err   error
	)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	built.Add(1)
	go func() {
		defer built.Done()
		if verr != nil {
			err = fmt.Errorf("go list -m github.com/google/go-containerregistry: %w", verr)
			return
		}
		cmd := exec.CommandContext(ctx, "go", "install", "github.com/google/go-containerregistry/cmd/crane@"+version)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		out, err = cmd.CombinedOutput()
	}()
	t.Cleanup(func() { cancel(); built.Wait() }) // before dir is removed
	return func(t *testing.T) string {
		t.Helper()
		built.Wait()
		if err != nil {
			msg := fmt.Sprintf("build crane %s: %v\n%s", version, err, out)
			if requireClients() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		return filepath.Join(dir, "crane")
	}
}
