package upstream_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// download, probe or background loop that is not stopped by Close is a leak.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
