package regtest

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus endpoint, parsed.
type Metrics map[string]*dto.MetricFamily

// Scrape GETs url and parses it as the Prometheus text format, failing the
// test on any error: a scrape that Prometheus could not read fails here too.
func Scrape(t testing.TB, url string) Metrics {
	t.Helper()
	resp, body := Do(t, http.MethodGet, url, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status = %d, want 200; body %s", url, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET %s: Content-Type = %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("GET %s: not the Prometheus text format: %v", url, err)
	}
	return fams
}

// Value sums the samples of the family name whose labels include the given
// "name", "value" pairs: a counter's or gauge's value, a histogram's count.
// A sample that is not there counts 0, as a counter not yet incremented.
func (m Metrics) Value(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, s := range f.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

// Has reports whether the family name has a sample with the given labels.
func (m Metrics) Has(name string, labels ...string) bool {
	f := m[name]
	return f != nil && slices.ContainsFunc(f.GetMetric(), func(s *dto.Metric) bool { return hasLabels(s, labels) })
}

// Diff lists the samples of the named families whose values differ between
// before and m, as "name{labels}: before → now", sorted: what a request
// changed, for test messages.
func (m Metrics) Diff(before Metrics, names ...string) []string {
	var out []string
	for _, name := range names {
		seen := map[string]bool{}
		for _, mm := range []Metrics{m, before} {
			f := mm[name]
			if f == nil {
				continue
			}
			for _, s := range f.GetMetric() {
				var pairs []string
				for _, l := range s.GetLabel() {
					pairs = append(pairs, l.GetName(), l.GetValue())
				}
				key := name + labelString(pairs)
				if seen[key] {
					continue
				}
				seen[key] = true
				if a, b := before.Value(name, pairs...), m.Value(name, pairs...); a != b {
					out = append(out, fmt.Sprintf("%s: %v → %v", key, a, b))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func hasLabels(s *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range s.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func labelString(pairs []string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i+1 < len(pairs); i += 2 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%s=%q", pairs[i], pairs[i+1])
	}
	b.WriteString("}")
	return b.String()
}
