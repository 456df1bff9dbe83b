package test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

// Three replicas on one bucket: an image pulled by tag through one of them
// is pulled by tag through another that never asked for it, with the
// upstream gone; and each replica's status page and metrics show the fleet.
func TestReplicasShareTagsOffline(t *testing.T) {
	up := startUpstream(t, nil)
	s := seed(t, up)
	imgDigest := regtest.Digest(t, s.img)
	f := startFleet(t, up.URL, 3, nil, "REGMIRROR_TAG_TTL=1h", "REGMIRROR_FLEET_INTERVAL=1s", "REGMIRROR_FLEET_GRACE=1h")
	pullImage(t, f.replicas[0], "library/multi:latest", imgDigest)
	waitBucket(t, f.s3, f.bucket, "the bucket holds the image", holdsAll(contentOf(t, s.img)...))
	eventually(t, "the tag's record in the bucket", func() (bool, string) {
		for key := range f.s3.Objects(t, f.bucket) {
			if key == "tags/docker.io/library/multi:latest" {
				return true, ""
			}
		}
		return false, "no record"
	})
	up.Close()
	before := up.Total()
	pullImage(t, f.replicas[2], "library/multi:latest", imgDigest)
	if n := up.Total() - before; n != 0 {
		t.Errorf("replica 2 asked the upstream %d times for a tag replica 0 learned", n)
	}

	eventually(t, "every replica sees one evictor", func() (bool, string) {
		var state []string
		here := 0
		for _, m := range f.replicas {
			resp, page := m.do(http.MethodGet, "/", nil)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `id="fleet"`) {
				return false, "no Replicas card"
			}
			if strings.Contains(string(page), "this replica runs the evictor") {
				here++
			}
			state = append(state, resp.Status)
		}
		return here == 1, strings.Join(state, ",")
	})
}
