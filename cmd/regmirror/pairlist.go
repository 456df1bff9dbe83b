package main

import (
	"fmt"
	"strings"
)

// pairList is a setting whose value is name=value entries separated by
// commas, each entry trimmed of the spaces around it: REGMIRROR_UPSTREAMS,
// REGMIRROR_FALLBACKS. Its fields are where those settings differ.
type pairList struct {
	setting string // as errors name it: REGMIRROR_UPSTREAMS
	form    string // what an entry looks like, as errors say it: name=URL
	repeats bool   // a name may come in more than one entry
	// blankIsEmpty: a value of spaces only is an empty list rather than one
	// empty entry.
	blankIsEmpty bool
}

var (
	upstreamsList = pairList{setting: envPrefix + "UPSTREAMS", form: "name=URL"}
	// One registry may have several fallbacks, tried in order.
	fallbacksList = pairList{setting: envPrefix + "FALLBACKS", form: "registry=URL", repeats: true, blankIsEmpty: true}
)

// pair is one entry of a pairList.
type pair struct {
	n           int // its place in the list, from 1
	name, value string
}

// parse splits list into its entries. An empty list has none. It refuses an
// empty entry, one without '=' or without a name and, unless l.repeats, a name
// given twice, with an error that names the setting and the entry. Names and
// values are the caller's to check.
//
// Even with an error, the entries that have an '=' are returned (a nameless
// one too), for a caller that reads what it can and leaves the refusal to
// validation.
func (l pairList) parse(list string) ([]pair, error) {
	if list == "" || l.blankIsEmpty && strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var pairs []pair
	var first error
	fail := func(n int, format string, a ...any) {
		if first == nil {
			first = fmt.Errorf("%s: entry %d%s", l.setting, n, fmt.Sprintf(format, a...))
		}
	}
	seen := map[string]int{}
	for i, entry := range strings.Split(list, ",") {
		n := i + 1
		entry = strings.TrimSpace(entry)
		name, value, ok := strings.Cut(entry, "=")
		switch {
		case entry == "":
			fail(n, " is empty: want %s entries separated by commas", l.form)
		case !ok || name == "":
			fail(n, " %q: want %s", redactURLs(entry), l.form)
		case !l.repeats && seen[name] > 0:
			fail(n, ": %s listed twice (entries %d and %d)", name, seen[name], n)
		}
		if ok {
			pairs = append(pairs, pair{n: n, name: name, value: value})
		}
		if _, dup := seen[name]; ok && !dup {
			seen[name] = n
		}
	}
	return pairs, first
}
