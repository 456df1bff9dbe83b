package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"regexp"
)

// runConfig is `regmirror config [flags]`: it prints every setting as
// serve would see it (defaults, then the environment, then flags), one
// REGMIRROR_NAME=value a line, with secrets as ***. It prints even a
// configuration that does not validate, then says what is wrong.
func runConfig(args []string, environ map[string]string, stdout io.Writer) error {
	cfg, err := parseConfig("config", args, environ)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, s := range settings(cfg) {
		fmt.Fprintf(stdout, "%s=%s\n", s.key, s.value)
	}
	return cfg.Validate()
}

// setting is one setting as `regmirror config` prints it.
type setting struct{ key, value string }

// settings lists the fields of cfg, a struct of settings with `env` tags,
// in order, each with its value as text. A field tagged secret:"true"
// shows *** when set, and credentials in any URL are replaced by ***.
func settings(cfg any) []setting {
	v := reflect.ValueOf(cfg)
	t := v.Type()
	out := make([]setting, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		val := text(v.Field(i).Interface())
		switch {
		case isSecret(f) && val != "":
			val = "***"
		default:
			val = redactURLs(val)
		}
		out = append(out, setting{envPrefix + f.Tag.Get("env"), val})
	}
	return out
}

// text is a value as its setting is written: a flag's or an env var's text.
func text(v any) string {
	if tm, ok := v.(encoding.TextMarshaler); ok {
		if b, err := tm.MarshalText(); err == nil {
			return string(b)
		}
	}
	return fmt.Sprint(v)
}

func isSecret(f reflect.StructField) bool { return f.Tag.Get("secret") == "true" }

// urlUserinfo is the user[:password]@ of a URL anywhere in a value (a URL,
// or a list of name=URL).
var urlUserinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s,]+@`)

// redactURLs replaces the credentials of every URL in s by ***: a user name
// alone can be a token.
func redactURLs(s string) string { return urlUserinfo.ReplaceAllString(s, "${1}***@") }

// secretFlag is a string flag whose value is never printed (in -h's
// defaults): it may be a password from the environment.
type secretFlag struct{ p *string }

func (s secretFlag) Set(v string) error { *s.p = v; return nil }

func (s secretFlag) String() string {
	if s.p == nil || *s.p == "" {
		return ""
	}
	return "***"
}
