package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
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
	if w := diskWarning(p.op.Usage()); w != "" {
		body["warnings"] = []string{w}
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
