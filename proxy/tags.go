package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxTagList caps a tag list relayed from upstream.
const maxTagList = 16 << 20

// serveTags relays an upstream tag list, with n and last passed through.
func (p *Proxy) serveTags(w http.ResponseWriter, r *http.Request, rt route) error {
	q := r.URL.Query()
	n, last := q.Get("n"), q.Get("last")
	if n != "" {
		if v, err := strconv.Atoi(n); err != nil || v < 0 {
			return &ociError{status: http.StatusBadRequest, code: "PAGINATION_NUMBER_INVALID", message: fmt.Sprintf("invalid n %q", n)}
		}
	}
	if last != "" && !tagRE.MatchString(last) {
		return errTagInvalid(last)
	}
	setCache(r.Context(), cachePass)
	resp, err := p.ups[rt.registry].Tags(r.Context(), rt.repo, n, last)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if link := resp.Header.Get("Link"); link != "" {
		h.Set("Link", rewriteLink(link, rt))
	}
	if resp.ContentLength >= 0 && resp.ContentLength <= maxTagList {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	_, err = io.Copy(w, io.LimitReader(resp.Body, maxTagList))
	return err
}

// rewriteLink keeps a client on the same registry when it follows the
// upstream's next-page link: the upstream's path is relative to itself, so a
// client that named the registry by ?ns= or by a path prefix gets it back.
func rewriteLink(link string, rt route) string {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start {
		return link
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil || u.Host != "" {
		return link // absolute links go elsewhere; leave them alone
	}
	switch rt.via {
	case viaNS:
		q := u.Query()
		q.Set("ns", rt.registry)
		u.RawQuery = q.Encode()
	case viaPrefix:
		if rest, ok := strings.CutPrefix(u.Path, "/v2/"); ok {
			u.Path = "/v2/" + rt.registry + "/" + rest
		}
	}
	return link[:start+1] + u.String() + link[end:]
}
