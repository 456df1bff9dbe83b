package upstream

import (
	"context"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Referrers GETs the referrers index of subject in repo (OCI 1.1), with no
// artifactType filter: one answer serves every filter. A registry without
// the referrers API answers 404, returned as *transport.Error.
func (c *Client) Referrers(ctx context.Context, repo string, subject v1.Hash) (*http.Response, error) {
	h := http.Header{"Accept": {"application/vnd.oci.image.index.v1+json"}}
	return c.do(ctx, http.MethodGet, repo, h, "referrers", subject.String())
}
