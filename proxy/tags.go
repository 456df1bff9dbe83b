package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
)

// TagIndex is what this mirror learned of tags: what each resolved to and
// when, and the listings built from those answers when upstream cannot be
// asked.
type TagIndex interface {
	// Tag is the last answer for a tag; cache.ErrNotFound when there is none.
	Tag(registry, repo, tag string) (cache.TagAnswer, error)
	SetTag(registry, repo, tag string, a cache.TagAnswer) error
	DeleteTag(registry, repo, tag string) error
	Tags(registry, repo string) ([]string, error)
	Repositories() ([]cache.Repository, error)
}

// maxTagList caps a tag list relayed from upstream.
const maxTagList = 16 << 20

// serveTags relays an upstream tag list, with n and last passed through.
// When upstream cannot answer, the tags this mirror has answers for are
// listed instead, with a Warning saying so.
func (p *Proxy) serveTags(w http.ResponseWriter, r *http.Request, rt route) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	setCache(r.Context(), cachePass)
	resp, err := p.ups[rt.registry].Tags(r.Context(), rt.repo, r.URL.Query().Get("n"), last)
	if err != nil {
		if !upstream.Unavailable(err) {
			return err
		}
		tags, lerr := p.tags.Tags(rt.registry, rt.repo)
		if lerr != nil || len(tags) == 0 {
			return err
		}
		setCache(r.Context(), cacheStale)
		w.Header().Set("Warning", fmt.Sprintf(`299 - "upstream %s unreachable: tags known to this mirror's cache"`, rt.registry))
		tags, more := page(tags, n, last)
		return writeList(w, r, map[string]any{"name": rt.repo, "tags": tags}, more, n, tags)
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

// serveCatalog lists the repositories this mirror has answers for: what an
// offline mirror can serve. The default registry's repositories are listed
// by name, others' with their registry in front, as clients address them.
func (p *Proxy) serveCatalog(w http.ResponseWriter, r *http.Request) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	repos, err := p.tags.Repositories()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(repos))
	for _, repo := range repos {
		if repo.Registry == p.opt.Default {
			names = append(names, repo.Name)
		} else if p.has(repo.Registry) {
			names = append(names, repo.Registry+"/"+repo.Name)
		}
	}
	slices.Sort(names)
	names, more := page(names, n, last)
	return writeList(w, r, map[string]any{"repositories": names}, more, n, names)
}

// defaultPage and maxPage bound a locally built list page.
const (
	defaultPage = 100
	maxPage     = 10000
)

func pageParams(r *http.Request) (n int, last string, err error) {
	q := r.URL.Query()
	n = defaultPage
	if s := q.Get("n"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			return 0, "", &ociError{status: http.StatusBadRequest, code: "PAGINATION_NUMBER_INVALID", message: fmt.Sprintf("invalid n %q", s)}
		}
		n = min(n, maxPage)
	}
	last = q.Get("last")
	if last != "" && len(last) > maxName+1+128 {
		return 0, "", errTagInvalid(last)
	}
	if r.URL.Path != "/v2/_catalog" && last != "" && !tagRE.MatchString(last) {
		return 0, "", errTagInvalid(last)
	}
	return n, last, nil
}

// page returns the sorted items after last, at most n of them, and whether
// more follow.
func page(items []string, n int, last string) ([]string, bool) {
	start := 0
	if last != "" {
		start, _ = slices.BinarySearch(items, last)
		if start < len(items) && items[start] == last {
			start++
		}
	}
	items = items[start:]
	if len(items) > n {
		return items[:n], true
	}
	return items, false
}

// writeList writes a JSON list page, with a Link to the next page when more follow.
func writeList(w http.ResponseWriter, r *http.Request, body map[string]any, more bool, n int, items []string) error {
	if more && len(items) > 0 {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {items[len(items)-1]}}
		if ns := r.URL.Query().Get("ns"); ns != "" {
			q.Set("ns", ns)
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
	}
	return writeJSON(w, r, http.StatusOK, body)
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
