package main

import (
	"strings"
	"testing"
)

func TestLabHACommandLines(t *testing.T) {
	tree := commandTree()
	for _, path := range []string{"lab ha", "lab ha up", "lab ha down", "lab ha demo"} {
		if tree.find(path) == nil {
			t.Errorf("command %q is missing from the command tree", path)
		}
	}
	for _, path := range []string{"lab ha up", "lab ha down", "lab ha demo"} {
		out, _, code := runCLI(append(strings.Fields(path), "-h")...)
		if code != 0 || !strings.Contains(out, "\nexample:\n  synguard "+path) {
			t.Errorf("%s -h: exit %d, no example in:\n%s", path, code, out)
		}
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"lab", "ha"}, "lab ha: no subcommand given"},
		{"bad mode", []string{"lab", "ha", "up", "--mode", "sometimes"}, `--mode "sometimes"`},
		{"demo size", []string{"lab", "ha", "demo", "--size", "0"}, "--size must be 1..4096"},
		{"demo rate", []string{"lab", "ha", "demo", "--rate", "5000"}, "--rate 1..1024"},
		{"demo conns", []string{"lab", "ha", "demo", "--conns", "0"}, "--conns 0"},
		{"demo kill", []string{"lab", "ha", "demo", "--kill-after", "0s"}, "--kill-after must be"},
		{"demo failback", []string{"lab", "ha", "demo", "--failback", "-1s"}, "--failback 0..10m"},
		{"down stray", []string{"lab", "ha", "down", "now"}, `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantUsageError(t, tt.args, tt.want)
		})
	}
	// A name the lab cannot use is refused before anything is touched.
	if _, stderr, code := runCLI("lab", "ha", "down", "--name", "../x"); code != 1 || !strings.Contains(stderr, "invalid HA lab name") {
		t.Errorf("lab ha down --name ../x: exit %d, stderr %q", code, stderr)
	}
}
