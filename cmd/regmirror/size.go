package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// byteSize is a size setting: 0, 500MB, 50GiB, 1.5TB. Decimal units (kB, MB,
// GB, TB) count in thousands, binary ones (KiB, MiB, GiB, TiB) in 1024s, as
// disk vendors and df -H versus df -h do; a bare number is bytes.
type byteSize int64

var sizeUnits = []struct {
	suffix string
	factor float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"b", 1},
}

func (s *byteSize) UnmarshalText(text []byte) error {
	in := strings.TrimSpace(string(text))
	num, factor := strings.ToLower(in), 1.0
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, factor = strings.TrimSpace(n), u.factor
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*factor > math.MaxInt64/2 {
		return fmt.Errorf("%q is not a size: want bytes, or a number with kB, MB, GB, TB, KiB, MiB, GiB or TiB", in)
	}
	*s = byteSize(f * factor)
	return nil
}

func (s byteSize) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// String prints the size in the largest binary unit that keeps it whole.
func (s byteSize) String() string {
	for _, u := range []struct {
		name   string
		factor int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.factor == 0 {
			return strconv.FormatInt(int64(s)/u.factor, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10)
}
