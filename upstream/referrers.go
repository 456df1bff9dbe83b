package upstream

import (
	"context"
	"net/http"
	"net/url"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Referrers GETs the referrers index of subject in repo (OCI 1.1), with no
// artifactType filter: one answer serves every filter. page is the query
// of a next page the registry linked to (nil for the first): only its
// query is taken, so paging never leaves the registry or the request. A
// registry without the referrers API answers 404, returned as
// *transport.Error.
func (c *Client) Referrers(ctx context.Context, repo string, subject v1.Hash, page url.Values) (*http.Response, error) {
	h := http.Header{"Accept": {"application/vnd.oci.image.index.v1+json"}}
	return c.doQuery(ctx, http.MethodGet, repo, h, page, "referrers", subject.String())
}
