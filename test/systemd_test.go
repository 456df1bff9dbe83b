//go:build linux

package test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdNotifyReadyWatchdogAndStopping runs the binary as systemd
// would with Type=notify and WatchdogSec=: it must say READY=1 once it
// serves, keep sending WATCHDOG=1, and say STOPPING=1 on SIGTERM.
func TestSystemdNotifyReadyWatchdogAndStopping(t *testing.T) {
	up := startUpstream(t, nil)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	messages := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(messages)
				return
			}
			messages <- string(buf[:n])
		}
	}()
	wait := func(want string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-messages:
				if !ok {
					t.Fatalf("notify socket closed before %q", want)
				}
				if strings.Contains(m, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q on the notify socket within 30s", want)
			}
		}
	}

	m := startMirror(t, up.URL, "", "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	wait("READY=1")
	if resp, _ := m.do("GET", "/v2/", nil); resp.StatusCode != 200 {
		t.Fatalf("GET /v2/ after READY=1: status %d", resp.StatusCode)
	}
	wait("WATCHDOG=1")
	wait("WATCHDOG=1")
	go m.Stop()
	wait("STOPPING=1")
}

func TestHealthcheckCommand(t *testing.T) {
	up := startUpstream(t, nil)
	m := startMirror(t, up.URL, "")
	if out, err := exec.Command(binary, "healthcheck", "-mirror", m.URL).CombinedOutput(); err != nil {
		t.Fatalf("healthcheck of a running mirror: %v: %s", err, out)
	}
	m.Stop()
	if err := exec.Command(binary, "healthcheck", "-mirror", m.URL).Run(); err == nil {
		t.Fatal("healthcheck of a stopped mirror succeeded")
	}
}

// TestSystemdUnitVerifies checks deploy/systemd/regmirror.service with
// systemd-analyze, with ExecStart pointed at the binary under test.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if requireClients() {
			t.Fatal("systemd-analyze is not installed (apt-get install systemd)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	unit, err := os.ReadFile(filepath.Join("..", "deploy", "systemd", "regmirror.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/regmirror serve") {
		t.Fatal("the unit's ExecStart changed; update this test")
	}
	path := filepath.Join(t.TempDir(), "regmirror.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/regmirror", binary)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "regmirror.service") {
			t.Errorf("systemd-analyze: %s", line)
		}
	}
}
