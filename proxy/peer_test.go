package proxy_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

// peerToken is the fleet's secret in these tests.
const peerToken = "peer-secret-0123456789abcdef"

// withFleet makes the proxy a replica whose leases are in a real versitygw
// bucket, with the store on disk as usual.
func withFleet(t *testing.T) envOption {
	srv := regtest.Versity(t)
	t.Setenv("AWS_ACCESS_KEY_ID", regtest.S3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", regtest.S3Secret)
	t.Setenv("AWS_SESSION_TOKEN", "")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	objs, err := cache.NewS3Objects(cache.S3Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket(t, "fleet"), Region: regtest.S3Region, Transport: tr},
		zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return func(c *envConfig) {
		c.proxy.Fleet = &proxy.Fleet{Leases: objs, Token: peerToken, Client: &http.Client{Transport: tr}, Wait: time.Second,
			Self: cache.LeaseHolder{ID: "replica-a", URL: "http://127.0.0.1:1", TTL: cache.MinLeaseTTL}}
	}
}

// The peer endpoint answers only to the fleet's secret; to anyone else it
// is no endpoint. It serves what the replica holds, with Range, never
// starts a download, and the secret is in no log line.
func TestPeerEndpointNeedsTheSecret(t *testing.T) {
	e := newEnv(t, withFleet(t))
	body, h := regtest.RandomBlob(t, 256<<10)
	e.pushBlob("library/peer", body)
	if resp, got := e.do("GET", "/v2/library/peer/blobs/"+h.String(), nil); resp.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("client GET: %d, %d bytes", resp.StatusCode, len(got))
	}
	path := proxy.PeerPath + h.String()
	for name, hdr := range map[string]http.Header{
		"no secret":           nil,
		"wrong secret":        {proxy.PeerTokenHeader: {peerToken + "x"}},
		"secret as a prefix":  {proxy.PeerTokenHeader: {peerToken[:10]}},
		"secret as Basic":     {"Authorization": {"Bearer " + peerToken}},
		"empty secret header": {proxy.PeerTokenHeader: {""}},
	} {
		resp, got := e.do("GET", path, hdr)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(got), "UNSUPPORTED") {
			t.Errorf("%s: %d %s, want 404 UNSUPPORTED", name, resp.StatusCode, got)
		}
	}
	ok := http.Header{proxy.PeerTokenHeader: {peerToken}}
	if resp, got := e.do("GET", path, ok); resp.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("peer GET: %d, %d bytes", resp.StatusCode, len(got))
	}
	ranged := http.Header{proxy.PeerTokenHeader: {peerToken}, "Range": {"bytes=1000-"}}
	if resp, got := e.do("GET", path, ranged); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[1000:]) {
		t.Fatalf("peer ranged GET: %d, %d bytes", resp.StatusCode, len(got))
	}
	before := e.counts.Total()
	_, other := regtest.RandomBlob(t, 10)
	if resp, got := e.do("GET", proxy.PeerPath+other.String(), ok); resp.StatusCode != http.StatusNotFound || !strings.Contains(string(got), "BLOB_UNKNOWN") {
		t.Fatalf("peer GET of a blob the replica does not hold: %d %s, want 404 BLOB_UNKNOWN", resp.StatusCode, got)
	}
	if n := e.counts.Total(); n != before {
		t.Fatalf("a peer request made %d upstream requests, want none", n-before)
	}
	if resp, _ := e.do("GET", proxy.PeerPath+"sha256:nothex", ok); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("peer GET of a bad digest: %d, want 400", resp.StatusCode)
	}
	e.settle()
	for _, entry := range e.logs.All() {
		line := fmt.Sprint(entry.Message, entry.ContextMap())
		if strings.Contains(line, peerToken[:10]) {
			t.Fatalf("the secret is in a log line: %s", line)
		}
	}
}
