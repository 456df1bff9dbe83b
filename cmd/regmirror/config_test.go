package main

import (
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
		row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(p.Key) + "` \\| `" + regexp.QuoteMeta(p.DefaultValue) + "` \\|")
		if !row.Match(readme) {
			t.Errorf("README has no settings row for %s with default %q", p.Key, p.DefaultValue)
		}
	}
}
