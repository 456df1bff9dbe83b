// Command scale measures the cache's index at scale (issue #6, item 7): with
// many blob records in the index, how long start-up takes, after a crash and
// after a clean close, and how long one eviction pass takes.
//
//	scale -n 1000000 -dir /tmp/scale [-evict 1,10] [-cpuprofile cpu.out]
//
// It seeds DIR, which must be empty or absent, as a store that crashed: the
// badger index at DIR/index written directly with the keys cache/index.go
// uses, and a 16-byte content file per record under DIR/blobs/sha256. The
// content need not hash to its name for this measurement; nothing here
// reads it. A tenth of the records are manifests, each naming the nine
// records after it as its children (the r/ record). Last-access times are
// spread over a year in a shuffled order. There is no clean-close mark.
//
// Then, through the cache package's public API only:
//
//  1. crash start: cache.Open returns at once and reconciles the index with
//     the content files in the background; the phase ends when AwaitCounts
//     returns. Usage().Objects must equal -n, which also proves that the seed
//     used the real key format. Close writes the clean-close mark.
//  2. clean start: cache.Open again, which reads the mark.
//  3. one eviction pass per -evict percentage: the store is reopened with a
//     budget that one GC() must bring down by that share of the objects,
//     and GC() is timed.
//
// Each phase's peak RSS (VmHWM, reset between phases through
// /proc/self/clear_refs) is printed with its time, in a table, and the
// anonymous and file-backed RSS at its end.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

const (
	fileSize      = 16 // bytes of each content file, and the size its record says
	childrenEach  = 9  // children of each manifest: the records after it
	manifestEvery = 10 // every tenth record is a manifest
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("scale: ")
	n := flag.Int("n", 100_000, "blob records to seed")
	dir := flag.String("dir", "", "store directory to create (must be empty or absent)")
	evict := flag.String("evict", "1,10", "eviction passes to time: comma-separated percentages of the objects each pass evicts")
	flatten := flag.Bool("flatten", true, "compact the seeded index into badger's lower levels before measuring (false: measure with the seed's level-0 tables still to compact)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of each measured phase to this path with -crash, -clean, -gc1 … appended")
	flag.Parse()
	if *dir == "" || *n < manifestEvery {
		log.Fatalf("need -dir, and -n of at least %d", manifestEvery)
	}
	var shares []int
	for s := range strings.SplitSeq(*evict, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p <= 0 || p >= 100 {
			log.Fatalf("-evict: %q is not a percentage between 1 and 99", s)
		}
		shares = append(shares, p)
	}
	if entries, err := os.ReadDir(*dir); err == nil && len(entries) > 0 {
		log.Fatalf("%s is not empty", *dir)
	}

	fmt.Printf("index scale: %d blob records (%d manifests with %d children each), %d-byte content files, in %s\n",
		*n, *n/manifestEvery, childrenEach, fileSize, *dir)
	fmt.Printf("%d CPUs, GOMAXPROCS %d, %s\n\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	var rows [][]string
	var cpuStart time.Duration
	var profile *os.File
	// begin starts a phase: a new peak RSS, the CPU time so far, a profile.
	begin := func(name string) {
		resetPeak()
		if *cpuprofile != "" && name != "" {
			f, err := os.Create(*cpuprofile + "-" + name)
			if err != nil {
				log.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				log.Fatal(err)
			}
			profile = f
		}
		cpuStart = cpuTime()
	}
	row := func(phase string, took time.Duration, objects, evicted string) {
		cpu := cpuTime() - cpuStart
		if profile != nil {
			pprof.StopCPUProfile()
			profile.Close()
			profile = nil
		}
		rows = append(rows, []string{phase, fmt.Sprintf("%.3f s", took.Seconds()), fmt.Sprintf("%.3f s", cpu.Seconds()),
			objects, evicted, status("VmHWM"), status("RssAnon") + " / " + status("RssFile")})
	}

	begin("")
	start := time.Now()
	if err := seedIndex(filepath.Join(*dir, "index"), *n, *flatten); err != nil {
		log.Fatal(err)
	}
	row("seed: badger index", time.Since(start), strconv.Itoa(*n), "")
	begin("")
	start = time.Now()
	if err := seedFiles(*dir, *n); err != nil {
		log.Fatal(err)
	}
	row("seed: content files", time.Since(start), strconv.Itoa(*n), "")

	want := int64(*n)

	// 1. Crash start: no clean-close mark, so Open starts reconciling in the
	// background and returns; the store serves what it holds from then on.
	// AwaitCounts returns when reconciliation has counted everything.
	begin("crash")
	start = time.Now()
	st, err := cache.Open(*dir, cache.Options{}, zap.NewNop())
	if err != nil {
		log.Fatalf("crash start: %v", err)
	}
	opened := time.Since(start)
	if err := st.AwaitCounts(context.Background()); err != nil {
		log.Fatalf("crash start: reconcile: %v", err)
	}
	took := time.Since(start)
	fmt.Printf("crash start: Open returned (serving) after %.3f s\n", opened.Seconds())
	u := st.Usage()
	if u.Objects != want || u.Bytes != want*fileSize {
		log.Fatalf("crash start: Usage() = %d objects, %d bytes; want %d, %d (does the seed match cache/index.go's keys?)",
			u.Objects, u.Bytes, want, want*fileSize)
	}
	row("crash start, until reconciled", took, strconv.FormatInt(u.Objects, 10), "")
	if err := st.Close(); err != nil {
		log.Fatal(err)
	}

	// 2. Clean start: the mark is there.
	begin("clean")
	start = time.Now()
	st, err = cache.Open(*dir, cache.Options{}, zap.NewNop())
	if err != nil {
		log.Fatalf("clean start: %v", err)
	}
	took = time.Since(start)
	u = st.Usage()
	if u.Objects != want {
		log.Fatalf("clean start: Usage().Objects = %d, want %d", u.Objects, want)
	}
	row("clean start", took, strconv.FormatInt(u.Objects, 10), "")
	if err := st.Close(); err != nil {
		log.Fatal(err)
	}

	// 3. Eviction passes. With both water marks at 1 the pass evicts down
	// to the budget itself, so a budget of (objects - k) × 16 bytes evicts
	// exactly k objects of 16 bytes.
	objects := want
	for _, p := range shares {
		k := objects * int64(p) / 100
		st, err = cache.Open(*dir, cache.Options{MaxSize: (objects - k) * fileSize, HighWater: 1, LowWater: 1}, zap.NewNop())
		if err != nil {
			log.Fatalf("open for eviction: %v", err)
		}
		begin(fmt.Sprintf("gc%d", p))
		start = time.Now()
		ev, err := st.GC()
		took = time.Since(start)
		if err != nil {
			log.Fatalf("GC: %v", err)
		}
		u = st.Usage()
		if ev.Objects != k || u.Objects != objects-k {
			log.Fatalf("GC of %d%%: evicted %d objects, %d left; want %d, %d", p, ev.Objects, u.Objects, k, objects-k)
		}
		row(fmt.Sprintf("GC over %d objects, evicts %d%%", objects, p), took, strconv.FormatInt(u.Objects, 10), strconv.FormatInt(ev.Objects, 10))
		objects = u.Objects
		if err := st.Close(); err != nil {
			log.Fatal(err)
		}
	}

	printTable([]string{"phase", "time", "CPU time", "objects after", "evicted", "peak RSS", "RSS anon / file at end"}, rows)
	fmt.Println("\ntime is wall-clock; CPU time is user + system of the whole process over the phase")
	fmt.Println("peak RSS is VmHWM over the phase: the Go heap, badger's caches, and the index files that badger maps and the phase read (RssFile)")
}

// digest is the sha256 of record i's number: a well-spread, reproducible name.
func digest(i int) [32]byte {
	return sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
}

// seedIndex writes n blob records, their access times and the manifests'
// reference lists, with the keys cache/index.go builds:
//
//	b/sha256:<hex>  0x01, the size as a uvarint, "application/octet-stream"
//	a/sha256:<hex>  8-byte big-endian unix nanoseconds
//	r/sha256:<hex>  the children's raw 32-byte digests, concatenated
//
// With flatten, the index is then compacted into badger's lower levels, so
// that the store does not start with a backlog of level-0 compaction that a
// long-lived index would not have.
func seedIndex(dir string, n int, flatten bool) error {
	db, err := badger.Open(cache.IndexOptions(dir).WithLogger(nil))
	if err != nil {
		return fmt.Errorf("open index: %w", err)
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	rec := append(binary.AppendUvarint([]byte{1}, fileSize), "application/octet-stream"...)
	// Access times: a shuffled second within the last year for each record.
	rng := rand.New(rand.NewPCG(1, 2))
	order := rng.Perm(n)
	now := time.Now()
	year := int64(365 * 24 * time.Hour)
	for i := range n {
		d := digest(i)
		name := "sha256:" + hex.EncodeToString(d[:])
		if err := wb.Set([]byte("b/"+name), rec); err != nil {
			return err
		}
		at := now.UnixNano() - year + int64(order[i])*(year/int64(n))
		if err := wb.Set([]byte("a/"+name), binary.BigEndian.AppendUint64(nil, uint64(at))); err != nil {
			return err
		}
		if i%manifestEvery == 0 {
			refs := make([]byte, 0, 32*childrenEach)
			for c := i + 1; c <= i+childrenEach && c < n; c++ {
				cd := digest(c)
				refs = append(refs, cd[:]...)
			}
			if err := wb.Set([]byte("r/"+name), refs); err != nil {
				return err
			}
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("close index: %w", err)
	}
	if !flatten {
		return nil
	}
	// Reopen (the close flushed the memtables to level 0) and compact
	// everything into the lower levels, as a long-lived index would be.
	if db, err = badger.Open(cache.IndexOptions(dir).WithLogger(nil)); err != nil {
		return fmt.Errorf("reopen index: %w", err)
	}
	if err := db.Flatten(2); err != nil {
		db.Close()
		return fmt.Errorf("compact index: %w", err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("close index: %w", err)
	}
	return nil
}

// seedFiles writes a content file for each record, without fsync, then
// syncs the filesystems once.
func seedFiles(dir string, n int) error {
	root := filepath.Join(dir, "blobs", "sha256")
	for b := range 256 {
		if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("%02x", b)), 0o750); err != nil {
			return err
		}
	}
	content := make([]byte, fileSize)
	const workers = 8
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				d := digest(i)
				h := hex.EncodeToString(d[:])
				if err := os.WriteFile(filepath.Join(root, h[:2], h), content, 0o640); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("write content files: %w", err)
		}
	}
	// Write them back now, rather than during the measured phases: the
	// kernel's writeback of a million new files would slow every unlink.
	syscall.Sync()
	return nil
}

// resetPeak lets go of what the last phase left, and starts a new peak RSS.
func resetPeak() {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		log.Printf("note: cannot reset the peak RSS (%v); figures are peaks since start", err)
	}
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// status is a memory figure of /proc/self/status (VmHWM, RssAnon …), in MB.
func status(field string) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				return "?"
			}
			return fmt.Sprintf("%d MB", kb/1024)
		}
	}
	return "?"
}

func printTable(head []string, rows [][]string) {
	width := make([]int, len(head))
	for _, r := range append([][]string{head}, rows...) {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range r {
			fmt.Fprintf(&b, " %-*s |", width[i], c)
		}
		fmt.Println(b.String())
	}
	line(head)
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}
