package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regmirror/regmirror/test/regtest"
)

// A blob streamed through for want of room obeys the same idle rule as one
// being stored: less than 32 KiB within the upstream timeout cuts it.
func TestTricklingUpstreamIsCutWhenStreamedThrough(t *testing.T) {
	body, h := regtest.RandomBlob(t, 64<<10)
	const bytes = 400
	cut := make(chan int, 1) // how many bytes went out before upstream's request was cut; -1 if never
	trickle := onBlobGet(h, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for i := range bytes { // a byte every 25 ms: 10 s in all, never 32 KiB
			if _, err := w.Write(body[i : i+1]); err != nil {
				cut <- i
				return
			}
			rc.Flush()
			select {
			case <-time.After(25 * time.Millisecond):
			case <-r.Context().Done():
				cut <- i
				return
			}
		}
		cut <- -1
	})
	e := newEnv(t, withBudget(16<<10), withUpstreamTimeout(300*time.Millisecond), withUpstreamFault(trickle))
	resp, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
	if err == nil {
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == http.StatusOK {
			t.Fatalf("client got a complete 200 (%d bytes) from a trickling upstream", len(got))
		}
	}
	if n := <-cut; n < 0 {
		t.Fatalf("the stream-through was never cut: upstream trickled all %d bytes over 10 s against an idle timeout of 0.3 s", bytes)
	}
	e.settle()
	idle := false
	for _, l := range e.logs.FilterMessage("request").All() {
		idle = idle || strings.Contains(fmt.Sprint(l.ContextMap()["error"]), "upstream stopped sending")
	}
	if !idle {
		t.Errorf("want the request's log line to say upstream stopped sending; logs: %v", e.logs.FilterMessage("request").All())
	}
}
