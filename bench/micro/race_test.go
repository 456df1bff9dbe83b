//go:build race

package micro_test

const raceEnabled = true
