package proxy

// An internal test: how fill cuts what it reads into writes of the temp file
// is a policy of the loop (toWrite), not visible from outside but in how the
// page cache holds the blob.

import "testing"

func TestToWriteGrowsTheTempFileInAlignedPieces(t *testing.T) {
	tests := []struct {
		name  string
		off   int64
		held  int
		ended bool
		want  int
	}{
		{"a full buffer at an aligned length goes out whole", 3 * pieceSize, pieceSize, false, pieceSize},
		{"a full buffer after a short write fills up to the next multiple", pieceSize + 1000, pieceSize, false, pieceSize - 1000},
		{"a short read goes out at once", 1000, 5000, false, 5000},
		{"a short read at an aligned length goes out at once", 2 * pieceSize, 5000, false, 5000},
		{"the end of the response writes everything held", pieceSize + 1000, pieceSize, true, pieceSize},
		{"nothing held, nothing written", 0, 0, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := toWrite(tt.off, tt.held, tt.ended); got != tt.want {
				t.Errorf("toWrite(%d, %d, %v) = %d, want %d", tt.off, tt.held, tt.ended, got, tt.want)
			}
		})
	}
}

// TestToWriteRealignsAfterShortReads runs fill's arithmetic over reads of
// ragged sizes, as a socket gives them: once a read fills the buffer, the
// file's length is a multiple of pieceSize after every write, until the next
// short read.
func TestToWriteRealignsAfterShortReads(t *testing.T) {
	reads := []int{70_000, 200_001, pieceSize, pieceSize, 12_345, pieceSize, pieceSize, pieceSize, 99}
	var off int64
	held := 0
	for i, n := range reads {
		n = min(n, pieceSize-held) // a read fills at most the buffer's free part
		held += n
		full := held == pieceSize
		out := toWrite(off, held, false)
		off += int64(out)
		held -= out
		if full && off%pieceSize != 0 {
			t.Fatalf("read %d (%d bytes) filled the buffer, and the file is then %d bytes long, not a multiple of %d", i, n, off, pieceSize)
		}
		if !full && held != 0 {
			t.Fatalf("read %d (%d bytes) was short, and %d bytes are still held", i, n, held)
		}
	}
}
