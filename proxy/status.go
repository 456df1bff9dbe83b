package proxy

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// StatusPath is the operator's status page: one server-rendered HTML page,
// no script, no external asset.
const StatusPath = "/"

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": FormatBytes,
	"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"clock": func(t time.Time) string { return t.UTC().Format("15:04:05") },
	"pct":   func(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" },
	"width": func(f float64) template.CSS {
		return template.CSS(strconv.FormatFloat(100*min(f, 1), 'f', 1, 64) + "%")
	},
	"add": func(n ...int64) int64 {
		var sum int64
		for _, x := range n {
			sum += x
		}
		return sum
	},
	"image": func(pin cache.Pin) string {
		sep := ":"
		if strings.Contains(pin.Ref, ":") { // a digest
			sep = "@"
		}
		return pin.Registry + "/" + pin.Repo + sep + pin.Ref
	},
}).Parse(statusHTML))

// statusView is what the status page shows.
type statusView struct {
	Now, Started time.Time
	Disk         diskView
	Stats        Stats
	HitRatio     float64
	HasHitRatio  bool
	Upstreams    []upstreamView
	Top          []repoPulls
	Recent       []pull
	Pins         []cache.Pin
	PinsError    string
	MetricsHere  bool // /metrics is served on this listener
	Charts       template.HTML
	Fleet        fleetView
	InFleet      bool
}

type diskView struct {
	cache.Usage
	Fill    float64 // Bytes / Budget; 0 without a budget
	Warning string  // a setting that keeps anything from being stored
	Bucket  cache.BucketState
}

// diskWarning is what the operator is told of a store that can keep
// nothing, or "".
func diskWarning(u cache.Usage) string {
	if !u.FloorAboveFilesystem() {
		return ""
	}
	return fmt.Sprintf("REGMIRROR_MIN_FREE (%s) is not less than the cache's filesystem (%s): nothing is stored,"+
		" every blob is streamed from upstream", FormatBytes(u.MinFree), FormatBytes(u.Filesystem))
}

type upstreamView struct {
	Name        string
	Health      upstream.Health
	Rate        upstream.RateLimit
	RateKnown   bool
	DownFor     string
	RateWarning bool // under a tenth of the quota left
}

func (p *Proxy) serveStatus(w http.ResponseWriter, r *http.Request) error {
	now := p.opt.Now()
	v := statusView{Now: now, Started: p.started, Stats: p.Stats(), MetricsHere: p.opt.MetricsHandler != nil}
	v.HitRatio, v.HasHitRatio = v.Stats.HitRatio()
	v.Disk.Usage = p.op.Usage()
	v.Disk.Warning = diskWarning(v.Disk.Usage)
	v.Disk.Bucket = p.op.Bucket()
	if v.Fleet, v.InFleet = p.fleetView(now); v.InFleet && !v.Fleet.LastPass.IsZero() {
		// The bucket is the fleet's: its usage as the evictor counted it,
		// not this replica's index's view of it.
		v.Disk.Bytes, v.Disk.Objects = v.Fleet.BucketBytes, v.Fleet.BucketObjects
		v.Disk.Evictions, v.Disk.EvictedBytes = v.Fleet.Evicted, v.Fleet.EvictedBytes
	}
	if v.Disk.Budget > 0 {
		v.Disk.Fill = float64(v.Disk.Bytes) / float64(v.Disk.Budget)
	}
	for _, name := range p.names {
		u := p.ups[name]
		uv := upstreamView{Name: name, Health: u.Health()}
		if !uv.Health.Up && !uv.Health.Since.IsZero() {
			uv.DownFor = now.Sub(uv.Health.Since).Round(time.Second).String()
		}
		uv.Rate, uv.RateKnown = u.RateLimit()
		uv.RateWarning = uv.RateKnown && uv.Rate.Remaining*10 < uv.Rate.Limit
		v.Upstreams = append(v.Upstreams, uv)
	}
	v.Charts = p.charts()
	v.Top = p.pulls.top(topPulls)
	v.Recent = p.pulls.recent()
	pins, err := p.op.Pins()
	if err != nil {
		v.PinsError = "the pins could not be read" // details go to the log
		p.log.Warn("status page: list pins", zap.Error(err))
	}
	v.Pins = pins

	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, v); err != nil {
		return fmt.Errorf("render status page: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// Nothing on the page runs or loads: say so, so nothing injected could.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(buf.Bytes())
	}
	return nil
}

// clientHost is a request's remote address without its port.
func clientHost(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// FormatBytes writes n in binary units with one decimal: 1.5 KiB, 20.0 GiB.
// The status page and the command line both print sizes with it.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + "KMGTPE"[exp:exp+1] + "iB"
}
