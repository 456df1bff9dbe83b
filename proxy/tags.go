package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// maxTagList caps a tag list relayed from upstream.
const maxTagList = 16 << 20

// serveTags relays an upstream tag list, with n and last passed through.
func (p *Proxy) serveTags(w http.ResponseWriter, r *http.Request, rt route) error {
	q := r.URL.Query()
	n, last := q.Get("n"), q.Get("last")
	if n != "" {
		if v, err := strconv.Atoi(n); err != nil || v < 0 {
			return &ociError{http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", fmt.Sprintf("invalid n %q", n)}
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
		h.Set("Link", link)
	}
	if resp.ContentLength >= 0 && resp.ContentLength <= maxTagList {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	_, err = io.Copy(w, io.LimitReader(resp.Body, maxTagList))
	return err
}
