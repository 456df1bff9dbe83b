package upstream_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps upstream free of the packages that use it: it may import no
// other regmirror package.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/regmirror/regmirror/") && dep != "github.com/regmirror/regmirror/upstream" {
			t.Errorf("upstream imports %s", dep)
		}
	}
}
