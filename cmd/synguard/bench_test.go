package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBenchBadCommandLines(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown subcommand", []string{"bench", "sideways"}, `unknown subcommand "sideways"`},
		{"bad rate", []string{"bench", "--rates", "10000,lots"}, `"lots": want 1..`},
		{"zero rate", []string{"bench", "--rates", "0"}, `"0": want 1..`},
		{"bad system", []string{"bench", "--systems", "synguard,pf"}, `unknown system "pf"`},
		{"system twice", []string{"bench", "--systems", "none,none"}, "listed twice"},
		{"negative duration", []string{"bench", "--duration", "-1s"}, "duration"},
		{"probe rate", []string{"bench", "--probe-rate", "0"}, "probe rate 0"},
		{"bad name", []string{"bench", "--name", "a b"}, "invalid lab name"},
		{"report without input", []string{"bench", "report"}, "--in is required"},
		{"stray argument", []string{"bench", "--quick", "now"}, `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runCLI(tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if last := lines[len(lines)-1]; !strings.Contains(last, tt.want) {
				t.Fatalf("error line %q, want it to contain %q", last, tt.want)
			}
		})
	}
}

func TestParseRates(t *testing.T) {
	got, err := parseRates("10000, 50_000,max")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{10000, 50000, 0}; !slices.Equal(got, want) {
		t.Errorf("parseRates = %v, want %v", got, want)
	}
	if s := ratesString(got); s != "10000,50000,max" {
		t.Errorf("ratesString = %q", s)
	}
}

// `bench report` draws the report again from a recorded report.json.
func TestBenchReport(t *testing.T) {
	out := t.TempDir()
	stdout, stderr, code := runCLI("bench", "report", "--in", "../../bench/testdata/report.json", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, filepath.Join(out, "report.md")) {
		t.Errorf("stdout %q does not name the report", stdout)
	}
	for _, f := range []string{"report.json", "report.md", "synack.png", "legit.png", "cpu.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
