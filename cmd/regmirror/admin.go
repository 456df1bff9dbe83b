package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"go.uber.org/zap"
)

// adminClient talks to a running mirror's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// adminCommands are the sub-commands served by the admin API.
var adminCommands = map[string]string{
	"ls":     "regmirror ls                   cached images: size, last use, pinned; and the disk budget",
	"pin":    "regmirror pin IMAGE...         keep an image (every platform) out of eviction; fetches what is missing (-referrers: its signatures, SBOMs too)",
	"unpin":  "regmirror unpin IMAGE...       let a pinned image be evicted again",
	"warm":   "regmirror warm IMAGE...        fetch images with all their platforms into the cache now (-referrers: their signatures, SBOMs too)",
	"gc":     "regmirror gc                   evict down to the budget now",
	"verify": "regmirror verify               re-hash every cached object; remove and report any that does not match",
}

// runAdmin runs one admin sub-command against the mirror's admin API.
func runAdmin(cmd string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n\nThe token, if the admin API has one, is read from %sADMIN_TOKEN.\n\n", adminCommands[cmd], envPrefix)
		fs.PrintDefaults()
	}
	addr := fs.String("admin", adminURL(os.Getenv(envPrefix+"ADMIN_ADDR")), "base URL of the running mirror's admin API")
	referrers := false
	if cmd == "pin" || cmd == "warm" {
		fs.BoolVar(&referrers, "referrers", false, "also the referrers of every manifest of the image (signatures, SBOMs, attestations: the referrers API), their manifests and blobs"+
			map[bool]string{true: "; pinned with it", false: ""}[cmd == "pin"])
	}
	dataDir, storage := "", storageDisk
	if cmd == "verify" {
		def, _ := loadConfig(nil, environ())
		fs.StringVar(&dataDir, "data-dir", def.DataDir, "with no mirror running, verify this cache directory directly")
		storage = def.Storage
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	names := fs.Args()
	takesImages := cmd == "pin" || cmd == "unpin" || cmd == "warm"
	if takesImages != (len(names) > 0) {
		fs.Usage()
		return fmt.Errorf("%s takes %s", cmd, map[bool]string{true: "one or more images", false: "no arguments"}[takesImages])
	}
	c := &adminClient{base: strings.TrimSuffix(*addr, "/"), token: os.Getenv(envPrefix + "ADMIN_TOKEN"), http: &http.Client{}}
	q := url.Values{"image": names}
	if referrers {
		q.Set("referrers", "1")
	}
	switch cmd {
	case "ls":
		return c.ls(stdout)
	case "pin":
		return c.warm(proxy.AdminPin, q, stdout, stderr, "pinned")
	case "warm":
		return c.warm(proxy.AdminWarm, q, stdout, stderr, "cached")
	case "unpin":
		if err := c.call(http.MethodPost, proxy.AdminUnpin, q, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unpinned %s\n", strings.Join(names, " "))
		return nil
	case "gc":
		var a proxy.GCAnswer
		if err := c.call(http.MethodPost, proxy.AdminGC, nil, &a); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "evicted %d objects, %s; cache now %s\n", a.Evicted.Objects, proxy.FormatBytes(a.Evicted.Bytes), usageLine(a.Usage))
		return nil
	case "verify":
		err := c.verify(stdout, stderr)
		if errors.Is(err, syscall.ECONNREFUSED) && storage == storageS3 {
			// Opened alone, the data dir would look like a disk cache whose
			// content is missing: the index of a bucket is only right with it.
			return fmt.Errorf("no mirror answers at %s, and with %sSTORAGE=s3 the data dir is a cache of the bucket: verify through a running mirror", c.base, envPrefix)
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			fmt.Fprintf(stderr, "no mirror answers at %s; verifying %s directly\n", c.base, dataDir)
			return verifyDir(dataDir, stdout, stderr)
		}
		return err
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// adminURL is the local admin API as REGMIRROR_ADMIN_ADDR places it.
func adminURL(addr string) string {
	if addr == "" {
		addr = "127.0.0.1:5001"
	}
	return defaultMirrorURL(addr, false) // the admin API never serves TLS
}

// call sends one request and decodes a JSON answer into out (when not nil).
func (c *adminClient) call(method, path string, q url.Values, out any) error {
	resp, err := c.do(method, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("read the admin API's answer: %w", err)
	}
	return nil
}

func (c *adminClient) do(method, path string, q url.Values) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the admin API (is the mirror running? %sADMIN_ADDR): %w", envPrefix, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var body struct {
			Errors []struct{ Message string } `json:"errors"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(b, &body) == nil && len(body.Errors) > 0 {
			return nil, fmt.Errorf("the admin API answered %s: %s", resp.Status, body.Errors[0].Message)
		}
		return nil, fmt.Errorf("the admin API answered %s: %s", resp.Status, b)
	}
	return resp, nil
}

func (c *adminClient) ls(stdout io.Writer) error {
	var a proxy.ImagesAnswer
	if err := c.call(http.MethodGet, proxy.AdminImages, nil, &a); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cache: %s\n\n", usageLine(a.Usage))
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tLAST USE\tPINNED")
	for _, img := range a.Images {
		name := img.Registry + "/" + img.Repo
		if strings.Contains(img.Ref, ":") { // a pin by digest: no tag holds a colon
			name += "@" + img.Ref
		} else {
			name += ":" + img.Ref
		}
		size := proxy.FormatBytes(img.Bytes)
		if img.Missing > 0 {
			size += fmt.Sprintf(" (%d parts not cached)", img.Missing)
		}
		last := "never"
		if !img.LastUsed.IsZero() {
			last = img.LastUsed.Local().Format(time.DateTime)
		}
		pinned := ""
		if img.Pinned {
			pinned = "pinned"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, short(img.Digest.String()), size, last, pinned)
	}
	return tw.Flush()
}

// warm streams a warm-up (or a pin) and draws its progress.
func (c *adminClient) warm(path string, q url.Values, stdout, stderr io.Writer, verb string) error {
	resp, err := c.do(http.MethodPost, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	bar := newProgressBar(stderr)
	failed := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var p proxy.WarmProgress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return fmt.Errorf("read the admin API's answer: %w", err)
		}
		bar.draw(p)
		if !p.Done {
			continue
		}
		bar.end()
		if p.Error != "" {
			failed++
			fmt.Fprintf(stdout, "%s: FAILED: %s\n", p.Image, p.Error)
			continue
		}
		refs := ""
		if q.Get("referrers") != "" {
			refs = fmt.Sprintf(", %d referrers", p.Referrers)
		}
		fmt.Fprintf(stdout, "%s: %s (%s, %d platforms%s, %d blobs, %s)\n", p.Image, verb, short(p.Digest), p.Platforms, refs, p.Blobs, proxy.FormatBytes(p.Bytes))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read the admin API's answer: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed", failed, len(q["image"]))
	}
	return nil
}

func (c *adminClient) verify(stdout, stderr io.Writer) error {
	resp, err := c.do(http.MethodPost, proxy.AdminVerify, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var p proxy.VerifyProgress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return fmt.Errorf("read the admin API's answer: %w", err)
		}
		if !p.Done {
			fmt.Fprintf(stderr, "verified %d objects, %s\n", p.Checked, proxy.FormatBytes(p.Bytes))
			continue
		}
		if p.Error != "" {
			return fmt.Errorf("verify: %s", p.Error)
		}
		return reportVerify(p.VerifyReport, stdout)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("the admin API ended the answer early")
}

// verifyDir verifies a cache directory that no mirror has open.
func verifyDir(dir string, stdout, stderr io.Writer) error {
	st, err := cache.Open(dir, cache.Options{}, zap.NewNop())
	if err != nil {
		return dataDirMismatch(err) // a bucket's data dir is verified through its mirror
	}
	defer st.Close()
	rep, err := st.Verify(context.Background(), nil)
	if err != nil {
		return err
	}
	return reportVerify(rep, stdout)
}

func reportVerify(rep cache.VerifyReport, stdout io.Writer) error {
	fmt.Fprintf(stdout, "verified %d objects, %s\n", rep.Checked, proxy.FormatBytes(rep.Bytes))
	for _, d := range rep.Corrupt {
		fmt.Fprintf(stdout, "CORRUPT, removed: %s\n", d)
	}
	for _, f := range rep.Stray {
		fmt.Fprintf(stdout, "stray file, removed: %s\n", f)
	}
	if n := len(rep.Corrupt); n > 0 {
		return fmt.Errorf("%d objects did not match their digest (removed; they are fetched again on the next pull)", n)
	}
	return nil
}

// progressBar draws a warm-up's progress: one redrawn line on a terminal,
// a line per finished blob otherwise (logs, CI).
type progressBar struct {
	w    io.Writer
	tty  bool
	last int // blobs done at the last line written (not a terminal)
}

func newProgressBar(w io.Writer) *progressBar {
	b := &progressBar{w: w, last: -1}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			b.tty = true
		}
	}
	return b
}

func (b *progressBar) draw(p proxy.WarmProgress) {
	if p.Blobs == 0 {
		return
	}
	if !b.tty {
		if p.BlobsDone != b.last {
			b.last = p.BlobsDone
			fmt.Fprintf(b.w, "%s: %d/%d blobs, %s of %s\n", p.Image, p.BlobsDone, p.Blobs, proxy.FormatBytes(p.BytesDone), proxy.FormatBytes(p.Bytes))
		}
		return
	}
	frac := 1.0
	if p.Bytes > 0 {
		frac = min(float64(p.BytesDone)/float64(p.Bytes), 1)
	}
	const width = 30
	filled := int(frac * width)
	fmt.Fprintf(b.w, "\r%-30.30s [%s%s] %3.0f%% %d/%d blobs %s/%s ", p.Image,
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), frac*100, p.BlobsDone, p.Blobs, proxy.FormatBytes(p.BytesDone), proxy.FormatBytes(p.Bytes))
}

func (b *progressBar) end() {
	if b.tty {
		fmt.Fprintln(b.w)
	}
	b.last = -1
}

func usageLine(u cache.Usage) string {
	budget := "no limit"
	if u.Budget > 0 {
		budget = fmt.Sprintf("%s (%.0f%%)", proxy.FormatBytes(u.Budget), 100*float64(u.Bytes)/float64(u.Budget))
	}
	line := fmt.Sprintf("%s of %s, %d objects; since start %d evicted (%s), %d streamed without storing",
		proxy.FormatBytes(u.Bytes), budget, u.Objects, u.Evictions, proxy.FormatBytes(u.EvictedBytes), u.Streamed)
	if u.Counting {
		line += " (still counting after an unclean stop)"
	}
	return line
}

func short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}
