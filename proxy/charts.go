package proxy

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The status page's charts: inline SVG written here, no script, nothing
// loaded. Colours differ in luminance and the light layers carry a pattern,
// so the charts read in grey scale and for the colour-blind.

// HistoryPoint is one step of a series, as HistoryPath returns it.
type HistoryPoint struct {
	Time         time.Time `json:"time"` // the step's start, UTC
	Requests     int64     `json:"requests"`
	Cached       int64     `json:"cached"`   // of the requests, answered from the cache
	HitRatio     *float64  `json:"hitRatio"` // null without requests
	FromCache    int64     `json:"fromCache"`
	FromUpstream int64     `json:"fromUpstream"`
	Evictions    int64     `json:"evictions"`
	EvictedBytes int64     `json:"evictedBytes"`
	// CacheBytes and Budget are null for a step the mirror did not see (it
	// was not running).
	CacheBytes *int64                   `json:"cacheBytes"`
	Budget     *int64                   `json:"budget"`
	Upstreams  map[string]UpstreamPoint `json:"upstreams"`
}

// UpstreamPoint is one upstream's step.
type UpstreamPoint struct {
	Errors        int64   `json:"errors"`
	RateLimited   int64   `json:"rateLimited"`
	DownSeconds   float64 `json:"downSeconds"`
	RateRemaining *int    `json:"rateRemaining"` // the lowest reported in the step; null if none was
	RateLimit     *int    `json:"rateLimit"`
}

// History is one range's series.
type History struct {
	Range       string         `json:"range"`
	StepSeconds int64          `json:"stepSeconds"`
	Upstreams   []string       `json:"upstreams"`
	Points      []HistoryPoint `json:"points"`
	// Totals over the range.
	FromCache    int64 `json:"fromCache"`
	FromUpstream int64 `json:"fromUpstream"`
}

func (p *Proxy) serveHistory(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()["range"]
	name := historyRanges[0].Name
	if len(q) > 0 {
		name = q[0]
	}
	for i, hr := range historyRanges {
		if hr.Name == name && len(q) <= 1 {
			p.sampleHistory()
			return writeJSON(w, r, http.StatusOK, historyView(hr, p.names, p.hist.series(i)))
		}
	}
	return &ociError{status: http.StatusBadRequest, code: "UNSUPPORTED",
		message: fmt.Sprintf("unknown range %q: want one range=24h or range=7d", strings.Join(q, ","))}
}

func historyView(hr historyRange, names []string, bs []bucket) History {
	h := History{Range: hr.Name, StepSeconds: int64(hr.Step / time.Second), Upstreams: names, Points: make([]HistoryPoint, len(bs))}
	for k, b := range bs {
		pt := HistoryPoint{Time: time.Unix(b.Start, 0).UTC(), Requests: b.Requests, Cached: b.Cached,
			FromCache: b.FromCache, FromUpstream: b.FromUpstream, Evictions: b.Evictions, EvictedBytes: b.EvictedBytes,
			Upstreams: make(map[string]UpstreamPoint, len(names))}
		if b.Requests > 0 {
			r := float64(b.Cached) / float64(b.Requests)
			pt.HitRatio = &r
		}
		if b.Sampled {
			pt.CacheBytes, pt.Budget = &b.CacheBytes, &b.Budget
		}
		for i, n := range names {
			ub := b.Ups[i]
			up := UpstreamPoint{Errors: ub.Errors, RateLimited: ub.RateLimited, DownSeconds: math.Round(ub.DownSeconds)}
			if ub.RateKnown {
				up.RateRemaining, up.RateLimit = &ub.RateRemaining, &ub.RateLimit
			}
			pt.Upstreams[n] = up
		}
		h.FromCache += b.FromCache
		h.FromUpstream += b.FromUpstream
		h.Points[k] = pt
	}
	return h
}

// The geometry of a chart, in SVG user units; it scales to its box.
const (
	chartW     = 560
	chartH     = 190
	plotLeft   = 64
	plotRight  = chartW - 8
	plotTop    = 30
	plotBottom = chartH - 24
	plotW      = plotRight - plotLeft
	plotH      = plotBottom - plotTop
)

// Fills: dark and solid for what the cache served, light and hatched for
// upstream; in the health strip, light for up, hatched mid-tone for
// rate-limited, dark for down.
const (
	colCache    = "#0a3069"
	colUpstream = "url(#p-up)"
	colDisk     = "#54aeff"
	colLine     = "#1f2328"
	colUp       = "#aceebb"
	colLimited  = "url(#p-rl)"
	colDown     = "#82071e"
	colNoData   = "url(#p-nd)"
)

// chartDefs are the patterns the charts share, once per page.
const chartDefs = `<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>` +
	`<pattern id="p-up" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#b6d7f5"/><rect width="2" height="6" fill="#3d7dc4"/></pattern>` +
	`<pattern id="p-rl" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="6" height="6" fill="#e3b341"/><rect width="3" height="6" fill="#7d4e00"/></pattern>` +
	`<pattern id="p-nd" width="4" height="4" patternUnits="userSpaceOnUse"><rect width="4" height="4" fill="#fff"/><rect width="1" height="1" fill="#8c959f"/></pattern>` +
	`</defs></svg>`

// charts samples the series and renders them for the status page.
func (p *Proxy) charts() template.HTML {
	p.sampleHistory()
	return renderCharts(historyView(historyRanges[0], p.names, p.hist.series(0)),
		historyView(historyRanges[1], p.names, p.hist.series(1)))
}

// renderCharts writes the charts section's HTML.
func renderCharts(day, week History) template.HTML {
	var b strings.Builder
	b.WriteString(chartDefs)
	b.WriteString(`<div class="charts">`)
	bytesChart(&b, "bytes-24h", "Bytes served, last 24 hours", "per 5 minutes, UTC", day)
	bytesChart(&b, "bytes-7d", "Bytes served, last 7 days", "per hour, UTC", week)
	hitChart(&b, day)
	diskChart(&b, week)
	b.WriteString(`</div>`)
	healthStrips(&b, day, week)
	return template.HTML(b.String())
}

// x is the centre of point k of n.
func x(k, n int) float64 { return plotLeft + (float64(k)+0.5)*plotW/float64(n) }

// y maps v of top onto the plot, 0 at the bottom.
func y(v, top float64) float64 {
	if top <= 0 {
		return plotBottom
	}
	return plotBottom - min(v/top, 1)*plotH
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

func svgOpen(b *strings.Builder, id, title, sub string, legend ...[2]string) {
	fmt.Fprintf(b, `<figure class="chart" id="%s"><figcaption>%s</figcaption>`, id, title)
	fmt.Fprintf(b, `<svg viewBox="0 0 %d %d" role="img" aria-label="%s">`, chartW, chartH, template.HTMLEscapeString(stripTags(title)))
	legendRow(b, legend)
	if sub != "" {
		fmt.Fprintf(b, `<text x="%d" y="17" text-anchor="end" class="muted">%s</text>`, plotRight, sub)
	}
}

// legendRow writes the legend left to right above the plot: a swatch of
// each fill (a fill "dashed" is the budget's dashed line) and its label.
func legendRow(b *strings.Builder, legend [][2]string) {
	lx := float64(plotLeft)
	for _, l := range legend {
		if l[1] == "dashed" {
			fmt.Fprintf(b, `<line x1="%s" x2="%s" y1="13" y2="13" class="line budget"/>`, num(lx), num(lx+14))
		} else {
			fmt.Fprintf(b, `<rect x="%s" y="8" width="14" height="10" fill="%s" stroke="%s" stroke-width=".5"/>`, num(lx), l[1], colLine)
		}
		fmt.Fprintf(b, `<text x="%s" y="17">%s</text>`, num(lx+18), l[0])
		lx += 28 + 6.2*float64(len(l[0]))
	}
}

func stripTags(s string) string {
	var out strings.Builder
	in := false
	for _, r := range s {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
		case !in:
			out.WriteRune(r)
		}
	}
	return out.String()
}

// yAxis draws the grid lines and their labels at 0, half and top.
func yAxis(b *strings.Builder, top float64, label func(float64) string) {
	for _, f := range []float64{0, .5, 1} {
		yy := y(f*top, top)
		fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%s" y2="%s" class="grid"/><text x="%d" y="%s" text-anchor="end">%s</text>`,
			plotLeft, plotRight, num(yy), num(yy), plotLeft-4, num(yy+4), label(f*top))
	}
}

// xAxis labels the hours (24 h: every 3 hours) or days (7 d: each midnight), in UTC
// as the rest of the page.
func xAxis(b *strings.Builder, h History, yy float64) {
	n := len(h.Points)
	for k, pt := range h.Points {
		t := pt.Time
		var label string
		switch {
		case h.StepSeconds < 3600 && t.Minute() == 0 && t.Hour()%3 == 0:
			label = t.Format("15:04")
		case h.StepSeconds >= 3600 && t.Hour() == 0:
			label = t.Format("Mon 2")
		default:
			continue
		}
		if k > n-n/16 {
			continue // it would run into the right edge
		}
		xx := plotLeft + float64(k)*plotW/float64(n)
		fmt.Fprintf(b, `<line x1="%s" x2="%s" y1="%d" y2="%s" class="tick"/><text x="%s" y="%s" text-anchor="middle">%s</text>`,
			num(xx), num(xx), plotTop, num(yy+3), num(xx), num(yy+14), label)
	}
}

// area is a closed path under tops and over bottoms, for points [from, to)
// of the series.
func area(b *strings.Builder, fill string, tops, bottoms []float64, from, to int) {
	n := len(tops)
	b.WriteString(`<path fill="` + fill + `" d="M`)
	for k := from; k < to; k++ {
		fmt.Fprintf(b, "%s %s ", num(x(k, n)), num(tops[k]))
	}
	for k := to - 1; k >= from; k-- {
		fmt.Fprintf(b, "L%s %s ", num(x(k, n)), num(bottoms[k]))
	}
	b.WriteString(`Z"/>`)
}

// polyline draws a line through every point; a NaN breaks it.
func polyline(b *strings.Builder, class string, ys []float64) {
	n := len(ys)
	b.WriteString(`<path class="` + class + `" d="`)
	pen := "M"
	for k, v := range ys {
		if math.IsNaN(v) {
			pen = "M"
			continue
		}
		fmt.Fprintf(b, "%s%s %s", pen, num(x(k, n)), num(v))
		pen = " "
	}
	b.WriteString(`"/>`)
}

func bytesChart(b *strings.Builder, id, title, per string, h History) {
	var peak int64
	for _, pt := range h.Points {
		peak = max(peak, pt.FromCache+pt.FromUpstream)
	}
	top := niceBytes(peak)
	caption := fmt.Sprintf(`%s: <b>%s saved</b> (from the cache), %s from upstream`, title, FormatBytes(h.FromCache), FormatBytes(h.FromUpstream))
	svgOpen(b, id, caption, per, [2]string{"from the cache", colCache}, [2]string{"from upstream", colUpstream})
	yAxis(b, float64(top), axisBytes)
	n := len(h.Points)
	base, cached, all := make([]float64, n), make([]float64, n), make([]float64, n)
	for k, pt := range h.Points {
		base[k] = plotBottom
		cached[k] = y(float64(pt.FromCache), float64(top))
		all[k] = y(float64(pt.FromCache+pt.FromUpstream), float64(top))
	}
	area(b, colCache, cached, base, 0, n)
	area(b, colUpstream, all, cached, 0, n)
	polyline(b, "line series", all)
	xAxis(b, h, plotBottom)
	b.WriteString(`</svg></figure>`)
}

func hitChart(b *strings.Builder, h History) {
	var req, cached int64
	ys := make([]float64, len(h.Points))
	for k, pt := range h.Points {
		req, cached = req+pt.Requests, cached+pt.Cached
		ys[k] = math.NaN()
		if pt.HitRatio != nil {
			ys[k] = y(*pt.HitRatio, 1)
		}
	}
	caption := "Hit ratio, last 24 hours"
	if req > 0 {
		caption += fmt.Sprintf(`: <b>%.1f%%</b> of %d manifest and blob requests`, 100*float64(cached)/float64(req), req)
	}
	svgOpen(b, "hit-24h", caption, "per 5 minutes, UTC", [2]string{"answered from the cache", colLine})
	yAxis(b, 1, func(v float64) string { return strconv.Itoa(int(math.Round(100*v))) + "%" })
	polyline(b, "line series ratio", ys)
	xAxis(b, h, plotBottom)
	b.WriteString(`</svg></figure>`)
}

func diskChart(b *strings.Builder, h History) {
	var peak, budget, last int64
	n := len(h.Points)
	for _, pt := range h.Points {
		if pt.CacheBytes != nil {
			peak, budget, last = max(peak, *pt.CacheBytes, *pt.Budget), *pt.Budget, *pt.CacheBytes
		}
	}
	top := niceBytes(peak)
	caption := fmt.Sprintf("Disk, last 7 days: <b>%s</b>", FormatBytes(last))
	if budget > 0 {
		caption += fmt.Sprintf(" of a %s budget (%.0f%%)", FormatBytes(budget), 100*float64(last)/float64(budget))
	} else {
		caption += ", no budget set"
	}
	svgOpen(b, "disk-7d", caption, "hourly, UTC", [2]string{"cache", colDisk}, [2]string{"budget", "dashed"})
	yAxis(b, float64(top), axisBytes)
	// Steps the mirror did not see leave a gap in the area and the line.
	ys, lim := make([]float64, n), make([]float64, n)
	for k, pt := range h.Points {
		ys[k], lim[k] = math.NaN(), math.NaN()
		if pt.CacheBytes != nil {
			ys[k] = y(float64(*pt.CacheBytes), float64(top))
			if *pt.Budget > 0 {
				lim[k] = y(float64(*pt.Budget), float64(top))
			}
		}
	}
	base := make([]float64, n)
	for k := range base {
		base[k] = plotBottom
	}
	for _, run := range runs(ys) {
		area(b, colDisk, ys, base, run[0], run[1])
	}
	polyline(b, "line series", ys)
	polyline(b, "line budget", lim)
	xAxis(b, h, plotBottom)
	b.WriteString(`</svg></figure>`)
}

// runs are the [from, to) ranges of ys without NaN.
func runs(ys []float64) [][2]int {
	var out [][2]int
	for k := 0; k < len(ys); {
		if math.IsNaN(ys[k]) {
			k++
			continue
		}
		j := k
		for j < len(ys) && !math.IsNaN(ys[j]) {
			j++
		}
		out = append(out, [2]int{k, j})
		k = j
	}
	return out
}

// upState is what the health strip shows of one upstream's step.
type upState int

const (
	stateNoData upState = iota
	stateUp
	stateLimited
	stateDown
)

func stateOf(pt HistoryPoint, name string) upState {
	u := pt.Upstreams[name]
	switch {
	case u.DownSeconds > 0:
		return stateDown
	case u.RateLimited > 0 || (u.RateRemaining != nil && *u.RateRemaining == 0):
		return stateLimited
	case pt.CacheBytes == nil && pt.Requests == 0 && u.Errors == 0:
		return stateNoData // the mirror was not running
	}
	return stateUp
}

var stateFill = [...]string{stateNoData: colNoData, stateUp: colUp, stateLimited: colLimited, stateDown: colDown}

// healthStrips draws, per upstream, a strip per range: when it was down or
// rate-limited.
func healthStrips(b *strings.Builder, day, week History) {
	const row = 34
	height := 30 + row*len(day.Upstreams) + 18
	b.WriteString(`<div class="charts">`)
	for _, h := range []History{day, week} {
		id, title := "health-24h", "Upstream health, last 24 hours"
		if h.StepSeconds >= 3600 {
			id, title = "health-7d", "Upstream health, last 7 days"
		}
		fmt.Fprintf(b, `<figure class="chart" id="%s"><figcaption>%s</figcaption><svg viewBox="0 0 %d %d" role="img" aria-label="%s">`,
			id, title, chartW, height, title)
		legendRow(b, [][2]string{{"up", colUp}, {"rate-limited", colLimited}, {"down", colDown}, {"no data", colNoData}})
		n := len(h.Points)
		w := float64(plotW) / float64(n)
		for i, name := range h.Upstreams {
			top := 30 + i*row
			fmt.Fprintf(b, `<text x="%d" y="%d" class="mono">%s</text>`, plotLeft, top+10, template.HTMLEscapeString(name))
			// Up underneath; each other state one path of its runs, drawn as
			// thick strokes (the shortest path text), so the size stays
			// bounded whatever the upstream did.
			fmt.Fprintf(b, `<rect class="s%d" x="%d" y="%d" width="%d" height="14" fill="%s"/>`, stateUp, plotLeft, top+14, plotW, colUp)
			var paths [stateDown + 1]strings.Builder
			for k := 0; k < n; {
				s := stateOf(h.Points[k], name)
				j := k + 1
				for j < n && stateOf(h.Points[j], name) == s {
					j++
				}
				if s != stateUp {
					fmt.Fprintf(&paths[s], "M%s %dh%s", num(plotLeft+float64(k)*w), top+21, num(float64(j-k)*w))
				}
				k = j
			}
			for s, p := range paths {
				if p.Len() > 0 {
					fmt.Fprintf(b, `<path class="s%d" stroke="%s" stroke-width="14" d="%s"/>`, s, stateFill[s], p.String())
				}
			}
		}
		xAxis(b, h, float64(height-18))
		b.WriteString(`</svg></figure>`)
	}
	b.WriteString(`</div>`)
}

// niceBytes is the axis top for a peak of n bytes: 1, 2 or 5 times a power
// of ten of a binary unit, so the labels read 20 MiB, 500 KiB, 1 GiB.
func niceBytes(n int64) int64 {
	if n <= 0 {
		return 1024
	}
	unit := int64(1)
	for unit <= math.MaxInt64/1024 && n >= unit*1024 {
		unit *= 1024
	}
	v := float64(n) / float64(unit) // in [1, 1024)
	for _, m := range []float64{1, 2, 5, 10, 20, 50, 100, 200, 500} {
		if m >= v {
			return int64(m) * unit
		}
	}
	return 1024 * unit
}

// axisBytes is a short byte label: 0, 512 KiB, 2.5 GiB.
func axisBytes(v float64) string {
	if v == 0 {
		return "0"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(v, 'f', -1, 64) + " " + units[i]
}
