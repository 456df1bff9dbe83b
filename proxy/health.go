package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/regmirror/regmirror/cache"
)

// HealthPath answers 200 while the process serves; ReadyPath answers 200
// while the store can serve. An upstream that is down does not make the
// mirror unready: it still serves what it has. ReadyPath lists each
// upstream's health for the operator, and warns of a store that can keep
// nothing.
const (
	HealthPath = "/healthz"
	ReadyPath  = "/readyz"
)

type upstreamHealth struct {
	Name      string     `json:"name"`
	Up        bool       `json:"up"`
	DownSince *time.Time `json:"down_since,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

type bucketHealth struct {
	Up         bool       `json:"up"`
	DownSince  *time.Time `json:"down_since,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	Pending    int64      `json:"pending_uploads"`
	Rebuilding bool       `json:"rebuilding,omitempty"`
}

// bucketWarning is what the operator is told of a bucket that is down.
func bucketWarning(b cache.BucketState) string {
	return "bucket down since " + b.Since.UTC().Format(time.RFC3339) + " (" + b.Reason +
		"): serving the local copy, streaming misses without storing them"
}

func (p *Proxy) serveReady(w http.ResponseWriter, r *http.Request) error {
	var ups []upstreamHealth
	for _, name := range p.names {
		h := p.ups[name].Health()
		uh := upstreamHealth{Name: name, Up: h.Up, Reason: h.Reason}
		if !h.Up {
			uh.DownSince = &h.Since
		}
		ups = append(ups, uh)
	}
	body := map[string]any{"ready": true, "upstreams": ups}
	// Ready, since it serves, but the operator should know.
	var warnings []string
	if w := diskWarning(p.op.Usage()); w != "" {
		warnings = append(warnings, w)
	}
	if b := p.op.Bucket(); b.Configured {
		// A bucket that is down is like an upstream that is: the mirror
		// still serves its local copy and streams misses, so it stays ready
		// and says so.
		bh := bucketHealth{Up: !b.Down, Reason: b.Reason, Pending: b.Pending, Rebuilding: b.Rebuilding}
		if b.Down {
			bh.DownSince = &b.Since
			warnings = append(warnings, bucketWarning(b))
		}
		body["bucket"] = bh
	}
	if len(warnings) > 0 {
		body["warnings"] = warnings
	}
	status := http.StatusOK
	if err := p.op.Healthy(); err != nil {
		body["ready"], body["problem"] = false, "store: "+err.Error()
		status = http.StatusServiceUnavailable
	}
	return writeJSON(w, r, status, body)
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(b)
	}
	return nil
}
