package upstream_test

import (
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

// TestDeps keeps upstream free of the packages that use it: it may import no
// other regmirror package.
func TestDeps(t *testing.T) {
	regtest.CheckDeps(t, "github.com/regmirror/regmirror", "github.com/regmirror/regmirror/upstream")
}
