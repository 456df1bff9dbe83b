package cache

import (
	"slices"
	"testing"
)

// Journals and the compacted table carry sha256 and sha512 digests alike,
// with their children, and a damaged one is refused, never misread.
func TestJournalEncoding(t *testing.T) {
	r256, _ := rawOf(Sum("sha256", []byte("a manifest")))
	r512, _ := rawOf(Sum("sha512", []byte("a layer")))
	for _, withFirst := range []bool{false, true} {
		want := map[raw]use{
			r256: {last: 7, first: 3, refs: []raw{r512, r256}},
			r512: {last: 9, first: 1},
		}
		if !withFirst {
			for r, u := range want {
				u.first = 0
				want[r] = u
			}
		}
		var b []byte
		for _, r := range []raw{r256, r512} {
			b = appendUse(b, r, want[r], withFirst)
		}
		got := map[raw]use{}
		if err := decodeUses(b, withFirst, func(r raw, u use) { got[r] = u }); err != nil {
			t.Fatal(err)
		}
		for r, u := range want {
			if g := got[r]; g.last != u.last || g.first != u.first || !slices.Equal(g.refs, u.refs) {
				t.Errorf("withFirst %v: %s decoded as %+v, want %+v", withFirst, r.hash(), g, u)
			}
		}
		for _, cut := range []int{1, 20, len(b) - 1} {
			if err := decodeUses(b[:cut], withFirst, func(raw, use) {}); err == nil {
				t.Errorf("withFirst %v: a journal cut at %d of %d bytes decoded", withFirst, cut, len(b))
			}
		}
	}
}
