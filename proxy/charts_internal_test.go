package proxy

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// chartsBudget bounds the charts' part of the status page, for up to
// maxChartedUpstreams upstreams whatever their health did.
const (
	chartsBudget        = 100 << 10
	maxChartedUpstreams = 8
)

// TestChartsStayUnderTheirSizeBudget draws the worst case: every step full,
// byte counts of many digits, and each upstream changing state every step.
func TestChartsStayUnderTheirSizeBudget(t *testing.T) {
	names := make([]string, maxChartedUpstreams)
	for i := range names {
		names[i] = fmt.Sprintf("registry-%d.example.internal:5000", i)
	}
	worst := func(r int) History {
		hr := historyRanges[r]
		bs := make([]bucket, hr.Points)
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
		for k := range bs {
			b := bucket{Start: start + int64(k)*int64(hr.Step/time.Second), Requests: 1e6, Cached: int64(k * 3000),
				FromCache: math.MaxInt64 / 10000 / int64(k+1), FromUpstream: int64(k) << 30, Sampled: true,
				CacheBytes: int64(k) << 35, Budget: 20 << 40, Ups: make([]upBucket, len(names))}
			for i := range b.Ups {
				switch (k + i) % 3 {
				case 0:
					b.Ups[i].DownSeconds = 1
				case 1:
					b.Ups[i].RateLimited = 1
				}
			}
			bs[k] = b
		}
		return historyView(hr, names, bs)
	}
	html := renderCharts(worst(0), worst(1))
	t.Logf("charts: %d bytes for %d upstreams in the worst case", len(html), len(names))
	if len(html) > chartsBudget {
		t.Errorf("the charts are %d bytes, over their budget of %d", len(html), chartsBudget)
	}
}

func TestNiceBytes(t *testing.T) {
	for _, tt := range []struct {
		peak int64
		top  string
	}{
		{0, "1 KiB"}, {1, "1 B"}, {3, "5 B"}, {1000, "1 KiB"}, {1023, "1 KiB"}, {1024, "1 KiB"}, {1025, "2 KiB"},
		{600 << 10, "1 MiB"}, {300 << 20, "500 MiB"}, {(20 << 30) + 1, "50 GiB"},
	} {
		if got := axisBytes(float64(niceBytes(tt.peak))); got != tt.top {
			t.Errorf("axis top for %d bytes = %s, want %s", tt.peak, got, tt.top)
		}
	}
}
