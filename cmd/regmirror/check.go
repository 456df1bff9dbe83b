package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/regmirror/regmirror/proxy"
)

// runCheck is `regmirror check [-mirror URL] [-referrers] IMAGE…`: it asks a running
// mirror whether each image would pull completely with the upstream down,
// prints what is missing, and exits non-zero if anything is.
func runCheck(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: regmirror check [-mirror URL] [-referrers] IMAGE...\n\nSays for each image whether the mirror could serve it completely with its upstream down.\n\n")
		fs.PrintDefaults()
	}
	referrers := fs.Bool("referrers", false, "also the referrers of every manifest of the image (signatures, SBOMs), as warm -referrers fetches them")
	mirror, err := parseMirror(fs, args)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no image named")
	}
	q := url.Values{"image": fs.Args()}
	if *referrers {
		q.Set("referrers", "1")
	}
	resp, err := mirrorClient(mirror, time.Minute).Get(mirror + proxy.CheckPath + "?" + q.Encode())
	if err != nil {
		return fmt.Errorf("ask the mirror: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("the mirror answered %s: %s", resp.Status, b)
	}
	var results []proxy.CheckResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&results); err != nil {
		return fmt.Errorf("read the mirror's answer: %w", err)
	}
	incomplete := 0
	for _, r := range results {
		switch {
		case r.Problem != "":
			incomplete++
			fmt.Fprintf(stdout, "%s: NOT READY: %s\n", r.Image, r.Problem)
		case r.Complete && *referrers:
			fmt.Fprintf(stdout, "%s: ready offline (%s, %d parts cached, %d referrers)\n", r.Image, r.Digest, r.Present, r.Referrers)
		case r.Complete:
			fmt.Fprintf(stdout, "%s: ready offline (%s, %d parts cached)\n", r.Image, r.Digest, r.Present)
		default:
			incomplete++
			fmt.Fprintf(stdout, "%s: NOT READY: %d parts cached, %d missing\n", r.Image, r.Present, len(r.Missing))
			for _, m := range r.Missing {
				fmt.Fprintf(stdout, "  missing %s %s %s\n", m.Kind, m.Digest, m.Platform)
			}
		}
	}
	if incomplete > 0 {
		return fmt.Errorf("%d of %d images would not pull offline", incomplete, len(results))
	}
	return nil
}

// parseMirror parses args with a -mirror flag, the base URL of the running
// mirror (the local one by default, as REGMIRROR_ADDR and REGMIRROR_TLS_CERT
// place it), and returns it without a trailing slash. Credentials for a
// mirror with REGMIRROR_HTPASSWD go in the URL: https://user:password@host:5000.
func parseMirror(fs *flag.FlagSet, args []string) (string, error) {
	def := defaultMirrorURL(os.Getenv(envPrefix+"ADDR"), os.Getenv(envPrefix+"TLS_CERT") != "")
	mirror := fs.String("mirror", def, "base URL of the running mirror (https://user:password@host:port with client authentication)")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	return strings.TrimSuffix(*mirror, "/"), nil
}

// defaultMirrorURL is the local mirror as REGMIRROR_ADDR places it, over
// https when it serves TLS.
func defaultMirrorURL(addr string, tls bool) string {
	scheme := "http://"
	if tls {
		scheme = "https://"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return scheme + "127.0.0.1:5000"
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return scheme + net.JoinHostPort(host, port)
}

// mirrorClient is the HTTP client of the check and healthcheck commands. A
// mirror on a loopback address is this machine's own: its certificate is
// not verified, since it is usually issued for the LAN name, not 127.0.0.1.
// Any other mirror's certificate must verify.
func mirrorClient(mirror string, timeout time.Duration) *http.Client {
	c := &http.Client{Timeout: timeout}
	u, err := url.Parse(mirror)
	if err != nil || u.Scheme != "https" {
		return c
	}
	host := u.Hostname()
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		c.Transport = t
	}
	return c
}
