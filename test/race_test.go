//go:build race

package test

// raceEnabled: the tests run under -race, so the binary is built with it too.
const raceEnabled = true
