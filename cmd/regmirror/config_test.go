package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
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
		MaxSize:         20 << 30,
		MinFree:         1 << 30,
		Storage:         "disk",
		LocalMaxSize:    10 << 30,
		S3StaleUploads:  time.Hour,
		PeerWait:        time.Minute,
		PeerLeaseTTL:    10 * time.Second,
		FleetInterval:   time.Minute,
		FleetGrace:      time.Hour,
		MaxDownloads:    64,
		AdminAddr:       "127.0.0.1:5001",
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
		{"metrics on the registry's own address", map[string]string{"REGMIRROR_ADDR": ":5000", "REGMIRROR_METRICS_ADDR": ":5000"}, nil, []string{"REGMIRROR_METRICS_ADDR"}},
		{"stray argument", nil, []string{"extra"}, []string{`"extra"`}},
		{"size without a number", map[string]string{"REGMIRROR_MAX_SIZE": "GiB"}, nil, []string{"REGMIRROR_MAX_SIZE"}},
		{"negative size", nil, []string{"-min-free", "-1MB"}, []string{"min-free"}},
		{"admin API open to the network without a token", map[string]string{"REGMIRROR_ADMIN_ADDR": ":5001"}, nil, []string{"REGMIRROR_ADMIN_ADDR", "REGMIRROR_ADMIN_TOKEN"}},
		{"certificate without key", map[string]string{"REGMIRROR_TLS_CERT": "/etc/regmirror/cert.pem"}, nil, []string{"REGMIRROR_TLS_CERT", "REGMIRROR_TLS_KEY"}},
		{"key without certificate", nil, []string{"-tls-key", "/etc/regmirror/key.pem"}, []string{"REGMIRROR_TLS_CERT", "REGMIRROR_TLS_KEY"}},
		{"unknown storage", map[string]string{"REGMIRROR_STORAGE": "gcs"}, nil, []string{"REGMIRROR_STORAGE", `"gcs"`}},
		{"s3 without a bucket", map[string]string{"REGMIRROR_STORAGE": "s3"}, nil, []string{"REGMIRROR_S3_BUCKET"}},
		{"bucket name S3 refuses", nil, []string{"-storage", "s3", "-s3-bucket", "my..cache"}, []string{"REGMIRROR_S3_BUCKET", "my..cache"}},
		{"endpoint with a path", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_ENDPOINT": "http://minio.lan:9000/cache"}, nil, []string{"REGMIRROR_S3_ENDPOINT"}},
		{"endpoint without a scheme", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_ENDPOINT": "minio.lan:9000"}, nil, []string{"REGMIRROR_S3_ENDPOINT"}},
		{"prefix with a dot-dot part", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_PREFIX": "a/../b"}, nil, []string{"REGMIRROR_S3_PREFIX"}},
		{"prefix with an empty part", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_PREFIX": "a//b"}, nil, []string{"REGMIRROR_S3_PREFIX"}},
		{"prefix of slashes only", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_PREFIX": "/"}, nil, []string{"REGMIRROR_S3_PREFIX"}},
		{"prefix with a newline", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_PREFIX": "a\nb"}, nil, []string{"REGMIRROR_S3_PREFIX"}},
		{"bucket named but storage left on disk", map[string]string{"REGMIRROR_S3_BUCKET": "cache"}, nil, []string{"REGMIRROR_S3_BUCKET", "REGMIRROR_STORAGE=s3"}},
		{"stale uploads never", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_STALE_UPLOADS": "0s"}, nil, []string{"REGMIRROR_S3_STALE_UPLOADS"}},
		{"replicas on disk", map[string]string{"REGMIRROR_PEER_TOKEN_FILE": "/run/peer", "REGMIRROR_PEER_URL": "http://10.0.0.1:5000"}, nil, []string{"REGMIRROR_PEER_TOKEN_FILE", "REGMIRROR_STORAGE=s3"}},
		{"replicas with no address to be reached at", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_PEER_TOKEN_FILE": "/run/peer"}, nil, []string{"REGMIRROR_PEER_URL", "REGMIRROR_ADDR"}},
		{"peer URL with credentials", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_PEER_TOKEN_FILE": "/run/peer", "REGMIRROR_PEER_URL": "http://u:p@10.0.0.1:5000"}, nil, []string{"REGMIRROR_PEER_URL"}},
		{"peer URL without multi-replica mode", map[string]string{"REGMIRROR_PEER_URL": "http://10.0.0.1:5000"}, nil, []string{"REGMIRROR_PEER_URL", "REGMIRROR_PEER_TOKEN_FILE"}},
		{"lease shorter than the store's clock", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_PEER_TOKEN_FILE": "/run/peer", "REGMIRROR_ADDR": "10.0.0.1:5000", "REGMIRROR_PEER_LEASE_TTL": "1s"}, nil, []string{"REGMIRROR_PEER_LEASE_TTL"}},
		{"local copy size without a number", map[string]string{"REGMIRROR_LOCAL_MAX_SIZE": "lots"}, nil, []string{"REGMIRROR_LOCAL_MAX_SIZE"}},
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

func TestSizes(t *testing.T) {
	for in, want := range map[string]byteSize{
		"0": 0, "1234": 1234, "500MB": 500e6, "50GiB": 50 << 30, "1.5TB": 1.5e12, "2 gib": 2 << 30, "64KiB": 64 << 10, "10b": 10,
	} {
		var got byteSize
		if err := got.UnmarshalText([]byte(in)); err != nil || got != want {
			t.Errorf("%q = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "-1", "1.5.5GB", "12XB", "NaN", "1e300TB"} {
		var got byteSize
		if err := got.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %d", in, got)
		}
	}
	if s := byteSize(20 << 30).String(); s != "20GiB" {
		t.Errorf("String = %q", s)
	}
}

func TestS3Settings(t *testing.T) {
	tests := []struct {
		name    string
		environ map[string]string
		args    []string
		want    cache.S3Config
	}{
		{"AWS by region", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "team-cache", "REGMIRROR_S3_REGION": "eu-west-1"}, nil,
			cache.S3Config{Bucket: "team-cache", Region: "eu-west-1"}},
		{"a store over plain HTTP, by flags", nil,
			[]string{"-storage", "s3", "-s3-endpoint", "http://127.0.0.1:7070", "-s3-bucket", "cache", "-s3-prefix", "mirrors/hub/"},
			cache.S3Config{Endpoint: "http://127.0.0.1:7070", Bucket: "cache", Prefix: "mirrors/hub/"}},
		{"https endpoint with a port", map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_ENDPOINT": "https://rgw.lan:7480/"}, nil,
			cache.S3Config{Endpoint: "https://rgw.lan:7480/", Bucket: "cache"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.environ == nil {
				tt.environ = map[string]string{}
			}
			cfg, err := loadConfig(tt.args, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.s3Config(); got != tt.want {
				t.Errorf("s3Config = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The bucket's credentials come from the AWS chain only: an endpoint that
// carries them is refused, and the message does not repeat them.
func TestS3EndpointCredentialsAreRefusedAndNotRepeated(t *testing.T) {
	environ := map[string]string{"REGMIRROR_STORAGE": "s3", "REGMIRROR_S3_BUCKET": "cache", "REGMIRROR_S3_ENDPOINT": "http://AKIAKEY:s3cret@minio.lan:9000"}
	_, err := loadConfig(nil, environ)
	if err == nil || !strings.Contains(err.Error(), "REGMIRROR_S3_ENDPOINT") || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "AKIAKEY") {
		t.Errorf("err = %v: want an error naming REGMIRROR_S3_ENDPOINT that does not repeat the credentials", err)
	}
	var out strings.Builder
	runConfig(nil, environ, &out)
	if strings.Contains(out.String(), "s3cret") || strings.Contains(out.String(), "AKIAKEY") {
		t.Errorf("regmirror config printed the credentials:\n%s", out.String())
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

func TestConfigCommandPrintsEverySettingAsServeSeesIt(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/somewhere/cache")
	environ := map[string]string{"REGMIRROR_TAG_TTL": "1m", "REGMIRROR_LOG_LEVEL": "warn", "REGMIRROR_ADDR": ":6000"}
	var out strings.Builder
	if err := runConfig([]string{"-log-level", "debug"}, environ, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	params, err := env.GetFieldParamsWithOptions(&Config{}, env.Options{Prefix: envPrefix})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != len(params) {
		t.Fatalf("printed %d lines for %d settings:\n%s", len(lines), len(params), out.String())
	}
	for i, p := range params {
		if !strings.HasPrefix(lines[i], p.Key+"=") {
			t.Errorf("line %d = %q, want %s=…", i+1, lines[i], p.Key)
		}
	}
	for _, want := range []string{
		"REGMIRROR_ADDR=:6000",                          // environment
		"REGMIRROR_TAG_TTL=1m0s",                        // environment, as a duration
		"REGMIRROR_LOG_LEVEL=debug",                     // the flag won
		"REGMIRROR_UPSTREAM_TIMEOUT=30s",                // default
		"REGMIRROR_DATA_DIR=/somewhere/cache/regmirror", // computed default
		"REGMIRROR_UPSTREAMS=",                          // unset
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in:\n%s", want, out.String())
		}
	}
}

func TestConfigCommandHidesSecrets(t *testing.T) {
	environ := map[string]string{
		"REGMIRROR_ADMIN_TOKEN": "adm1n-t0ken",
		"REGMIRROR_UPSTREAM":    "https://user:s3cret@registry.example",
		"REGMIRROR_UPSTREAMS":   "ghcr.io=https://ghp_T0KEN@ghcr.io,quay.io=https://quay.io",
	}
	var out strings.Builder
	err := runConfig(nil, environ, &out)
	if err == nil {
		t.Error("a URL with credentials passed validation")
	}
	if strings.Contains(out.String(), "s3cret") || strings.Contains(out.String(), "ghp_T0KEN") || strings.Contains(out.String(), "user:") || strings.Contains(out.String(), "adm1n") {
		t.Errorf("credentials printed:\n%s", out.String())
	}
	for _, want := range []string{
		"REGMIRROR_ADMIN_TOKEN=***",
		"REGMIRROR_UPSTREAM=https://***@registry.example",
		"REGMIRROR_UPSTREAMS=ghcr.io=https://***@ghcr.io,quay.io=https://quay.io",
	} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("no line %q in:\n%s", want, out.String())
		}
	}
}

// secretConfig has a setting tagged secret, as a future password setting would be.
type secretConfig struct {
	Password string `env:"PASSWORD" flag:"password" usage:"a password" secret:"true"`
	Empty    string `env:"EMPTY"    flag:"empty"    usage:"unset"      secret:"true"`
	User     string `env:"USER"     flag:"user"     usage:"a user name"`
}

func TestSettingsTaggedSecretAreNeverShown(t *testing.T) {
	var cfg secretConfig
	if err := env.ParseWithOptions(&cfg, env.Options{Prefix: envPrefix, Environment: map[string]string{
		"REGMIRROR_PASSWORD": "from-env-s3cret", "REGMIRROR_USER": "alice"}}); err != nil {
		t.Fatal(err)
	}
	var help strings.Builder
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(&help)
	bindFlags(fs, &cfg)
	fs.PrintDefaults()
	if strings.Contains(help.String(), "s3cret") || !strings.Contains(help.String(), `default "alice"`) {
		t.Errorf("-h shows:\n%s\nwant the user's default and not the password", help.String())
	}
	if err := fs.Parse([]string{"-password", "from-flag-s3cret"}); err != nil || cfg.Password != "from-flag-s3cret" {
		t.Fatalf("-password: err %v, value %q", err, cfg.Password)
	}
	got := settings(cfg)
	want := []setting{{"REGMIRROR_PASSWORD", "***"}, {"REGMIRROR_EMPTY", ""}, {"REGMIRROR_USER", "alice"}}
	if !slices.Equal(got, want) {
		t.Errorf("settings = %v, want %v", got, want)
	}
}

func TestFallbacksConfig(t *testing.T) {
	tests := []struct {
		name, fallbacks, insecure string
		want                      []fallbackSpec
		err                       string // in the error; "" means accepted
	}{
		{name: "two in order", fallbacks: "docker.io=https://mirror.gcr.io, docker.io=http://mirror2.lan:5000?ns=docker.io", insecure: "mirror2.lan:5000",
			want: []fallbackSpec{{Registry: "docker.io", Name: "mirror.gcr.io", URL: "https://mirror.gcr.io"},
				{Registry: "docker.io", Name: "mirror2.lan:5000", URL: "http://mirror2.lan:5000?ns=docker.io", Insecure: true}}},
		{name: "prefix", fallbacks: "ghcr.io=https://harbor.lan/ghcr-proxy",
			want: []fallbackSpec{{Registry: "ghcr.io", Name: "harbor.lan/ghcr-proxy", URL: "https://harbor.lan/ghcr-proxy"}}},
		{name: "unconfigured registry", fallbacks: "quay.io=https://q.lan", err: "REGMIRROR_FALLBACKS: entry 1: \"quay.io\" is not a configured upstream"},
		{name: "no URL", fallbacks: "docker.io", err: "REGMIRROR_FALLBACKS: entry 1 \"docker.io\": want registry=URL"},
		{name: "bad URL", fallbacks: "docker.io=https://m.lan#x", err: "REGMIRROR_FALLBACKS: docker.io: upstream URL"},
		{name: "password", fallbacks: "docker.io=https://u:hunter2pw@m.lan", err: "credentials do not belong"},
		{name: "twice", fallbacks: "docker.io=https://m.lan,docker.io=https://m.lan?ns=docker.io", err: "m.lan listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(nil, map[string]string{"REGMIRROR_DATA_DIR": "/d", "REGMIRROR_UPSTREAMS": "ghcr.io=https://ghcr.io",
				"REGMIRROR_FALLBACKS": tt.fallbacks, "REGMIRROR_INSECURE_REGISTRIES": tt.insecure})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || strings.Contains(err.Error(), "hunter2pw") {
					t.Fatalf("err = %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			specs, _, _ := cfg.resolveUpstreams()
			got, err := cfg.resolveFallbacks(specs)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("fallbacks = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// The tier example in deploy/tiers (and the README) is a configuration that
// starts, and the site names every registry at the regional.
func TestDeployTierFilesAreValid(t *testing.T) {
	for _, file := range []string{"regional.env", "site.env"} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "tiers", file))
		if err != nil {
			t.Fatal(err)
		}
		environ := map[string]string{}
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				environ[k] = v
			}
		}
		cfg, err := loadConfig(nil, environ)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		specs, _, _ := cfg.resolveUpstreams()
		for _, sp := range specs {
			ep, err := upstream.ParseEndpoint(sp.URL)
			if err != nil {
				t.Fatalf("%s: %s: %v", file, sp.Name, err)
			}
			if file == "site.env" && ep.NS != sp.Name {
				t.Errorf("%s: %s is asked of %s as %q", file, sp.Name, ep.Base, ep.NS)
			}
		}
		readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), "REGMIRROR_UPSTREAMS="+environ["REGMIRROR_UPSTREAMS"]) {
			t.Errorf("%s: the README's example does not show its REGMIRROR_UPSTREAMS", file)
		}
	}
}
