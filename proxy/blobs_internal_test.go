package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// firstReader notes where the first read of content starts and how far
// the reads go from there before a seek.
type firstReader struct {
	*bytes.Reader
	first int64 // -1 until a read
	run   int64 // bytes read from first on, until a seek
	moved bool  // a seek after the first read
}

func (r *firstReader) Read(p []byte) (int, error) {
	if r.first < 0 {
		r.first, _ = r.Reader.Seek(0, io.SeekCurrent)
	}
	n, err := r.Reader.Read(p)
	if !r.moved {
		r.run += int64(n)
	}
	return n, err
}

func (r *firstReader) Seek(off int64, whence int) (int64, error) {
	if r.first >= 0 {
		r.moved = true
	}
	return r.Reader.Seek(off, whence)
}

// firstRead guesses where http.ServeContent first reads a blob, and how
// far: right for every single range and the first of several, as
// ServeContent itself says.
func TestFirstReadIsServeContents(t *testing.T) {
	const size = 1000
	for _, rh := range []string{"", "bytes=10-19", "bytes=990-", "bytes=0-", "bytes=-10", "bytes=-2000",
		"bytes= 5 - 9", "bytes=300-309,20-29", "bytes=-5,0-1", "bytes=999-999", "bytes=990-1999",
		"bytes=0-9223372036854775807", "bytes=0-0,10-19"} {
		r := &firstReader{Reader: bytes.NewReader(make([]byte, size)), first: -1}
		req := httptest.NewRequest(http.MethodGet, "/blob", nil)
		req.Header.Set("Range", rh)
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(rec, req, "", time.Time{}, r)
		from := firstRead(req.Header)
		want := from.Offset
		if from.Suffix {
			want = max(size-from.Offset, 0)
		}
		wantRun := size - want
		if !from.Suffix && from.Length > 0 {
			wantRun = min(from.Length, size-want)
		}
		if r.first != want || r.run != wantRun {
			t.Errorf("Range %q: ServeContent (%d) read first at %d, %d bytes; firstRead says %+v", rh, rec.Code, r.first, r.run, from)
		}
	}
}
