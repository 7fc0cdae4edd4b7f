package firewall

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got, the rules of one family (or "" for none), with the
// golden file testdata/name, and shows the difference line by line. With
// -update it rewrites the file instead: review the change with git diff
// before committing it.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", filepath.FromSlash(name))
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./firewall -run '%s' -update` to write it)", err, t.Name())
	}
	// Compared line by line, so that the diff shows each rule that differs
	// in its place.
	if diff := cmp.Diff(strings.Split(string(want), "\n"), strings.Split(got, "\n")); diff != "" {
		t.Errorf("rules differ from %s (-want +got):\n%s\nIf the change is meant, run `go test ./firewall -run '%s' -update` and review the diff.", path, diff, t.Name())
	}
}
