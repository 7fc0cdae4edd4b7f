package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recordedReport is report.json from a real `synguard bench --quick`.
const recordedReport = "testdata/report.json"

// The report files are drawn from a recorded report.json alone: written
// again, report.json reads back the same, report.md has a row per run in
// order and the plots show every system.
func TestReportFromRecordedJSON(t *testing.T) {
	rep, err := LoadReport(recordedReport)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) == 0 || len(rep.Baselines) == 0 {
		t.Fatalf("recorded report has %d runs and %d baselines", len(rep.Runs), len(rep.Baselines))
	}
	dir := t.TempDir()
	if err := rep.Write(dir); err != nil {
		t.Fatal(err)
	}

	again, err := LoadReport(filepath.Join(dir, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rep, again); diff != "" {
		t.Errorf("report.json does not read back the same (-recorded +written):\n%s", diff)
	}
	// The field names the issue asks for are there, for every run.
	var raw struct {
		Runs []map[string]any `json:"runs"`
	}
	b, err := os.ReadFile(filepath.Join(dir, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for i, run := range raw.Runs {
		for _, k := range []string{"system", "offered_pps", "synack_pps", "legit_success", "handshake_p50_ms",
			"handshake_p99_ms", "cpu_us_per_syn", "queue_drops", "gateway_rss_mb"} {
			if _, ok := run[k]; !ok {
				t.Errorf("run %d has no %q", i, k)
			}
		}
	}

	md, err := os.ReadFile(filepath.Join(dir, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	checkMarkdown(t, rep, string(md))

	for _, f := range []string{PlotSynack, PlotLegit, PlotCPU} {
		t.Run(f, func(t *testing.T) {
			img := readPNG(t, filepath.Join(dir, f))
			if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 250 {
				t.Errorf("plot is %v", b)
			}
			for _, sys := range rep.systems() {
				if n := countColour(img, systemStyle[sys].color); n < 50 {
					t.Errorf("%s's colour covers %d pixels: its line is missing", sys, n)
				}
			}
		})
	}
}

// checkMarkdown finds, in order, one table row per run carrying its
// numbers, and the other sections.
func checkMarkdown(t *testing.T, rep *Report, md string) {
	t.Helper()
	for _, want := range []string{"## Results", "## Reading", "## Baselines", "## Method",
		"(synack.png)", "(legit.png)", "(cpu.png)", rep.Machine.Kernel} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	var rows []string
	for _, line := range strings.Split(md, "\n") {
		for _, sys := range AllSystems {
			if strings.Contains(line, " | "+string(sys)+" | ") {
				rows = append(rows, line)
			}
		}
	}
	if len(rows) != len(rep.Runs) {
		t.Fatalf("report.md has %d result rows for %d runs:\n%s", len(rows), len(rep.Runs), strings.Join(rows, "\n"))
	}
	for i, run := range rep.sortedRuns() {
		prefix := fmt.Sprintf("| %s | %s | %s | %s | ", rateName(run.TargetPPS), run.System, fmtCount(run.OfferedPPS), fmtCount(run.SynackPPS))
		if !strings.HasPrefix(rows[i], prefix) {
			t.Errorf("row %d is %q, want it to start %q", i, rows[i], prefix)
		}
		if !strings.Contains(rows[i], fmt.Sprintf("(%d/%d)", run.LegitOK, run.LegitAttempts)) {
			t.Errorf("row %d lacks the legitimate client counts: %q", i, rows[i])
		}
	}
	for _, sys := range rep.systems() {
		if !strings.Contains(md, "- **"+string(sys)+"**: ") {
			t.Errorf("the reading says nothing about %s", sys)
		}
	}
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return img
}

func countColour(img image.Image, c color.Color) int {
	r0, g0, b0, _ := c.RGBA()
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r == r0 && g == g0 && bl == b0 {
				n++
			}
		}
	}
	return n
}

// The results table, exactly, for a small report: the kernel systems have
// no queue and no process of their own, and the generator's maximum sorts
// last.
func TestTableMarkdown(t *testing.T) {
	rep := &Report{Runs: []RunResult{
		{System: None, TargetPPS: 0, OfferedPPS: 210_129.4, SynackPPS: 211_624, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 0.4, HandshakeP99ms: 1.48, TotalP50ms: 0.78, TotalP99ms: 3.98, CPUusPerSYN: 3.52, OtherLoad: 0.41},
		{System: Synguard, TargetPPS: 100_000, OfferedPPS: 99_989, SynackPPS: 51_916, LegitOK: 94, LegitAttempts: 100, LegitSuccess: 0.94,
			HandshakeP50ms: 80.74, HandshakeP99ms: 1107.2, TotalP50ms: 247, TotalP99ms: 1996, CPUusPerSYN: 10.42, QueueDrops: 240_426, GatewayRSSMB: 21.84, OtherLoad: 0.03},
		{System: Synproxy, TargetPPS: 100_000, OfferedPPS: 99_986, SynackPPS: 99_986, LegitOK: 0, LegitAttempts: 100,
			CPUusPerSYN: -0.5},
	}}
	var b strings.Builder
	if err := rep.TableMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	want := `| target | system | offered SYN/s | SYN-ACK/s | answered | legit ok | handshake p50 / p99 | request p50 / p99 | CPU µs/SYN | queue drops | peak RSS | other load |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 100000/s | synguard | 99,989 | 51,916 | 51.9% | 94.0% (94/100) | 81 / 1107 ms | 247 / 1996 ms | 10.42 | 240,426 | 21.8 MiB | 3% |
| 100000/s | synproxy | 99,986 | 99,986 | 100.0% | 0.0% (0/100) | – / – ms | – / – ms | -0.50 | n/a | n/a | 0% |
| max | none | 210,129 | 211,624 | 100.7% | 100.0% (100/100) | 0.40 / 1.48 ms | 0.78 / 3.98 ms | 3.52 | n/a | n/a | 41% |
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

// The reading reports, from the numbers, where each system stopped
// keeping up and what its queue dropped.
func TestReading(t *testing.T) {
	rep := &Report{Runs: []RunResult{
		{System: Synguard, TargetPPS: 20_000, OfferedPPS: 20_000, SynackPPS: 20_000, LegitSuccess: 1, LegitOK: 10, LegitAttempts: 10},
		{System: Synguard, TargetPPS: 100_000, OfferedPPS: 100_000, SynackPPS: 50_000, LegitSuccess: 0.9, LegitOK: 9, LegitAttempts: 10,
			QueueDrops: 250_000, ProbeErrors: map[string]int{"request: timeout": 1}},
		{System: Synproxy, TargetPPS: 20_000, OfferedPPS: 20_000, SynackPPS: 20_000, LegitSuccess: 1},
		{System: Synproxy, TargetPPS: 100_000, OfferedPPS: 100_000, SynackPPS: 99_000, LegitSuccess: 1, OtherLoad: 0.4},
	}}
	lines := rep.reading()
	joined := strings.Join(lines, "\n")
	for _, want := range []string{
		"**synguard**: answered at least 95% of the SYNs up to 20,000 SYN/s offered; at 100,000 SYN/s it answered 50%",
		"at worst 90% succeeded (at 100,000 SYN/s offered",
		"1 × request: timeout",
		"Its queue dropped SYNs from 100,000 SYN/s offered on (250,000 in all)",
		"**synproxy**: answered at least 95% of the SYNs at every load, up to 100,000 SYN/s",
		"At the highest load: synguard 50,000 SYN-ACK/s of 100,000 offered",
		"even after measuring again, during: synproxy at 100000/s (40%)",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("reading lacks %q:\n%s", want, joined)
		}
	}
}

func TestLoadReportErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"runs":[{"system":"iptables"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadReport(bad); err == nil || !strings.Contains(err.Error(), "iptables") {
		t.Errorf("unknown system: %v", err)
	}
	if err := os.WriteFile(bad, []byte(`{"runs":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadReport(bad); err == nil {
		t.Error("truncated JSON accepted")
	}
	if _, err := LoadReport(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{{0, "0"}, {999.4, "999"}, {999.6, "1,000"}, {1_234_567, "1,234,567"}, {-4321, "-4,321"}} {
		if got := fmtCount(tt.v); got != tt.want {
			t.Errorf("fmtCount(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
	if got := rateName(0); got != "max" {
		t.Errorf("rateName(0) = %q", got)
	}
}
