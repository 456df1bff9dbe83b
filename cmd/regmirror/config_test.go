package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"go.uber.org/zap/zapcore"
)

func TestDefaultsMakeADockerHubMirror(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/somewhere/cache")
	cfg, err := loadConfig(nil, map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Addr:            ":5000",
		DataDir:         "/somewhere/cache/regmirror",
		Upstream:        "https://registry-1.docker.io",
		TagTTL:          5 * time.Minute,
		UpstreamTimeout: 30 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		LogLevel:        zapcore.InfoLevel,
		LogFormat:       "json",
	}
	if cfg != want {
		t.Errorf("defaults = %+v\nwant %+v", cfg, want)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	environ := map[string]string{
		"REGMIRROR_ADDR":      "127.0.0.1:6000",
		"REGMIRROR_TAG_TTL":   "1m",
		"REGMIRROR_DATA_DIR":  "/from/env",
		"REGMIRROR_LOG_LEVEL": "warn",
	}
	cfg, err := loadConfig([]string{"-tag-ttl", "2h", "-log-level", "debug"}, environ)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:6000" || cfg.DataDir != "/from/env" {
		t.Errorf("environment ignored: %+v", cfg)
	}
	if cfg.TagTTL != 2*time.Hour || cfg.LogLevel != zapcore.DebugLevel {
		t.Errorf("flags did not win: ttl %v, level %v", cfg.TagTTL, cfg.LogLevel)
	}
}

func TestBadValuesNameTheirSetting(t *testing.T) {
	tests := []struct {
		name    string
		environ map[string]string
		args    []string
		want    []string
	}{
		{"unparsable duration", map[string]string{"REGMIRROR_TAG_TTL": "soon"}, nil, []string{"REGMIRROR_TAG_TTL"}},
		{"unknown level", map[string]string{"REGMIRROR_LOG_LEVEL": "loud"}, nil, []string{"REGMIRROR_LOG_LEVEL"}},
		{"several at once", map[string]string{"REGMIRROR_LOG_FORMAT": "xml", "REGMIRROR_UPSTREAM": "ftp://x", "REGMIRROR_UPSTREAM_TIMEOUT": "0s"}, nil,
			[]string{"REGMIRROR_LOG_FORMAT", "REGMIRROR_UPSTREAM", "REGMIRROR_UPSTREAM_TIMEOUT"}},
		{"negative ttl by flag", nil, []string{"-tag-ttl", "-1s"}, []string{"REGMIRROR_TAG_TTL"}},
		{"empty address by flag", nil, []string{"-addr", ""}, []string{"REGMIRROR_ADDR"}},
		{"stray argument", nil, []string{"extra"}, []string{`"extra"`}},
		{"certificate without key", map[string]string{"REGMIRROR_TLS_CERT": "/etc/regmirror/cert.pem"}, nil, []string{"REGMIRROR_TLS_CERT", "REGMIRROR_TLS_KEY"}},
		{"key without certificate", nil, []string{"-tls-key", "/etc/regmirror/key.pem"}, []string{"REGMIRROR_TLS_CERT", "REGMIRROR_TLS_KEY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.environ == nil {
				tt.environ = map[string]string{}
			}
			_, err := loadConfig(tt.args, tt.environ)
			if err == nil {
				t.Fatal("loadConfig accepted a bad value")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

func TestUpstreamPasswordIsNotRepeated(t *testing.T) {
	_, err := loadConfig(nil, map[string]string{"REGMIRROR_UPSTREAM": "https://user:s3cret@registry.example"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("err = %v: want an error that does not repeat the password", err)
	}
}

// TestReadmeDocumentsEverySetting fails when a REGMIRROR_* setting or its
// default is missing from the README's settings table.
func TestReadmeDocumentsEverySetting(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	params, err := env.GetFieldParamsWithOptions(&Config{}, env.Options{Prefix: envPrefix})
	if err != nil {
		t.Fatal(err)
	}
	if len(params) == 0 {
		t.Fatal("no settings found")
	}
	for _, p := range params {
		def := "`" + p.DefaultValue + "`"
		if p.DefaultValue == "" {
			def = "*(none)*"
		}
		row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(p.Key) + "` \\| " + regexp.QuoteMeta(def) + " \\|")
		if !row.Match(readme) {
			t.Errorf("README has no settings row for %s with default %q", p.Key, p.DefaultValue)
		}
	}
}

func TestResolveUpstreams(t *testing.T) {
	hub := upstreamSpec{Name: "docker.io", URL: "https://registry-1.docker.io"}
	tests := []struct {
		name    string
		environ map[string]string
		want    []upstreamSpec // the default first
		wantErr string
	}{
		{"no configuration is Docker Hub", nil, []upstreamSpec{hub}, ""},
		{"a URL is docker.io", map[string]string{"REGMIRROR_UPSTREAM": "http://127.0.0.1:5001"},
			[]upstreamSpec{{Name: "docker.io", URL: "http://127.0.0.1:5001"}}, ""},
		{"more upstreams beside Docker Hub", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=https://ghcr.io, quay.io=https://quay.io"},
			[]upstreamSpec{hub, {Name: "ghcr.io", URL: "https://ghcr.io"}, {Name: "quay.io", URL: "https://quay.io"}}, ""},
		{"the issue's example", map[string]string{"REGMIRROR_UPSTREAMS": "docker.io=http://127.0.0.1:5001,ghcr.io=http://127.0.0.1:5002", "REGMIRROR_UPSTREAM": "docker.io"},
			[]upstreamSpec{{Name: "docker.io", URL: "http://127.0.0.1:5001"}, {Name: "ghcr.io", URL: "http://127.0.0.1:5002"}}, ""},
		{"docker.io in the list wins over the default URL", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=https://ghcr.io,docker.io=http://127.0.0.1:5001"},
			[]upstreamSpec{{Name: "docker.io", URL: "http://127.0.0.1:5001"}, {Name: "ghcr.io", URL: "https://ghcr.io"}}, ""},
		{"another default, no Docker Hub", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=https://ghcr.io", "REGMIRROR_UPSTREAM": "ghcr.io"},
			[]upstreamSpec{{Name: "ghcr.io", URL: "https://ghcr.io"}}, ""},
		{"insecure by name and by URL host", map[string]string{"REGMIRROR_UPSTREAMS": "build.lan:5000=https://10.0.0.5:5000,tls.lan=https://tls.lan", "REGMIRROR_INSECURE_REGISTRIES": "build.lan:5000, tls.lan"},
			[]upstreamSpec{hub, {Name: "build.lan:5000", URL: "https://10.0.0.5:5000", Insecure: true}, {Name: "tls.lan", URL: "https://tls.lan", Insecure: true}}, ""},
		{"two URLs for docker.io", map[string]string{"REGMIRROR_UPSTREAMS": "docker.io=http://a", "REGMIRROR_UPSTREAM": "http://b"}, nil, "REGMIRROR_UPSTREAM=docker.io"},
		{"unknown default", map[string]string{"REGMIRROR_UPSTREAM": "ghcr.io"}, nil, "REGMIRROR_UPSTREAM"},
		{"entry without URL", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io"}, nil, "REGMIRROR_UPSTREAMS"},
		{"bad name", map[string]string{"REGMIRROR_UPSTREAMS": "GHCR.io=https://ghcr.io"}, nil, "REGMIRROR_UPSTREAMS"},
		{"bad URL", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=ghcr.io"}, nil, "REGMIRROR_UPSTREAMS"},
		{"listed twice", map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=https://a,ghcr.io=https://b"}, nil, "twice"},
		{"insecure registry that is not configured", map[string]string{"REGMIRROR_INSECURE_REGISTRIES": "elsewhere:5000"}, nil, "REGMIRROR_INSECURE_REGISTRIES"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.environ == nil {
				tt.environ = map[string]string{}
			}
			cfg, err := loadConfig(nil, tt.environ)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, def, err := cfg.resolveUpstreams()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || def != tt.want[0].Name {
				t.Errorf("upstreams = %v (default %s)\nwant        %v", got, def, tt.want)
			}
		})
	}
}

func TestDefaultMirrorURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "http://127.0.0.1:5000",
		":5000":          "http://127.0.0.1:5000",
		"0.0.0.0:6000":   "http://127.0.0.1:6000",
		"[::]:7000":      "http://127.0.0.1:7000",
		"10.0.0.5:5000":  "http://10.0.0.5:5000",
		"[fd00::1]:5000": "http://[fd00::1]:5000",
	} {
		if got := defaultMirrorURL(addr, false); got != want {
			t.Errorf("defaultMirrorURL(%q) = %s, want %s", addr, got, want)
		}
	}
	if got := defaultMirrorURL(":5000", true); got != "https://127.0.0.1:5000" {
		t.Errorf("defaultMirrorURL with TLS = %s, want https://127.0.0.1:5000", got)
	}
}
