package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/regmirror/regmirror/cache"
)

// streamThrough serves a blob the store cannot keep straight from upstream:
// the handed-over response of the flight when this requester claimed it, or
// a GET of its own. The content is hashed on the way and its last byte held
// back until it matched, as for a blob in flight, so a client never gets a
// whole wrong blob. Range is ignored (a 200 with the whole blob is a valid
// answer), because a part could not be verified.
func (p *Proxy) streamThrough(w http.ResponseWriter, r *http.Request, up Upstream, rt route, h *handedOver) error {
	if h == nil {
		// A download of its own, so it takes a slot like any other.
		release, err := p.slot(r.Context(), rt.digest)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancelCause(r.Context())
		resp, err := up.Blob(ctx, http.MethodGet, rt.repo, rt.digest)
		if err != nil {
			cancel(nil)
			release()
			return err
		}
		h = &handedOver{resp: resp, ctx: ctx, cancel: cancel, release: release}
	}
	defer h.end()
	// Like a download, a body that stops sending (or trickles) fails
	// instead of hanging.
	a := p.newAttempt(h.resp, h.ctx, h.cancel)
	defer a.idle.Stop()

	size := h.resp.ContentLength
	setBlobHeaders(w.Header(), rt.digest)
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	hasher := sha256.New()
	buf := make([]byte, 256<<10)
	var n int64
	var held []byte // the last byte read, sent only once the content verified
	for {
		k, err := h.resp.Body.Read(buf)
		if k > 0 {
			a.progress(k)
			hasher.Write(buf[:k])
			n += int64(k)
			if len(held) > 0 {
				if _, werr := w.Write(held); werr != nil {
					return werr
				}
			}
			if _, werr := w.Write(buf[:k-1]); werr != nil {
				return werr
			}
			held = append(held[:0], buf[k-1])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if cause := context.Cause(h.ctx); cause != nil {
				err = cause
			}
			return fmt.Errorf("stream %s from upstream: %w", rt.digest, err)
		}
	}
	if size >= 0 && n != size {
		return fmt.Errorf("blob %s: %w: got %d bytes, want %d", rt.digest, cache.ErrSizeMismatch, n, size)
	}
	if got := hex.EncodeToString(hasher.Sum(nil)); got != rt.digest.Hex {
		return fmt.Errorf("blob %s: %w: content hashes to sha256:%s", rt.digest, cache.ErrDigestMismatch, got)
	}
	if len(held) > 0 {
		if _, err := w.Write(held); err != nil {
			return err
		}
	}
	return nil
}
