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
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Reports recorded by real `synguard bench --quick` runs: recordedReport
// from before synguard's queue counts were measured (its runs have no
// "queues"), recordedQueues from `--queues 1,2` (both from before XDP,
// "path" and synguard-nfqueue), recordedXDP with synguard's XDP fast path
// and synguard-nfqueue beside it, recordedACK from `--attack ack`,
// recordedRTT from `--client-rtt 20ms`.
const (
	recordedReport = "testdata/report.json"
	recordedQueues = "testdata/report-queues.json"
	recordedXDP    = "testdata/report-xdp.json"
	recordedACK    = "testdata/report-ack.json"
	recordedRTT    = "testdata/report-rtt.json"
)

// The report files are drawn from a recorded report.json alone: written
// again, report.json reads back the same, report.md has a row per run in
// order and the plots show every system.
func TestReportFromRecordedJSON(t *testing.T) {
	for _, f := range []string{recordedReport, recordedQueues, recordedXDP, recordedACK, recordedRTT} {
		t.Run(filepath.Base(f), func(t *testing.T) { checkRecordedReport(t, f) })
	}
}

// rewrite writes rep's files into a new directory and reads its
// report.json back.
func rewrite(t *testing.T, rep *Report) (dir string, again *Report) {
	t.Helper()
	dir = t.TempDir()
	if err := rep.Write(dir); err != nil {
		t.Fatal(err)
	}
	again, err := LoadReport(filepath.Join(dir, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	return dir, again
}

func checkRecordedReport(t *testing.T, path string) *Report {
	rep, err := LoadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) == 0 || len(rep.Baselines) == 0 {
		t.Fatalf("recorded report has %d runs and %d baselines", len(rep.Runs), len(rep.Baselines))
	}
	dir, again := rewrite(t, rep)
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
	// A run carries its attack's keys and not the other's.
	keys := []string{"syns_sent", "synack_pps", "cpu_us_per_syn", "machine_cpu_us_per_syn"}
	other := []string{"acks_sent", "backend_ack_pps", "rst_pps", "cpu_us_per_ack", "machine_cpu_us_per_ack", "process_cpu_us_per_ack"}
	if rep.attack() == KindACK {
		keys, other = other[:5], append(keys, "process_cpu_us_per_syn", "engine_syns")
	}
	for i, run := range raw.Runs {
		for _, k := range append([]string{"system", "queues", "path", "offered_pps", "legit_success", "handshake_p50_ms",
			"handshake_p99_ms", "queue_drops", "gateway_rss_mb"}, keys...) {
			if _, ok := run[k]; !ok {
				t.Errorf("run %d has no %q", i, k)
			}
		}
		for _, k := range other {
			if _, ok := run[k]; ok {
				t.Errorf("%s run %d has %q", rep.attack(), i, k)
			}
		}
		// "system" stays the plain enum; "queues" is synguard's count
		// (one for runs recorded before it), 0 for the kernel systems;
		// "path" is xdp or nfqueue for synguard, kernel for the others.
		sys, _ := run["system"].(string)
		q, _ := run["queues"].(float64)
		s, err := ParseSystem(sys)
		if err != nil || s.IsSynguard() != (q >= 1) || (!s.IsSynguard() && q != 0) {
			t.Errorf("run %d: system %q with %v queues", i, run["system"], run["queues"])
		}
		if p, _ := run["path"].(string); s.IsSynguard() != (p == PathXDP || p == PathTC || p == PathNFQueue) || (!s.IsSynguard() && p != PathKernel) {
			t.Errorf("run %d: system %q with path %q", i, sys, p)
		}
	}

	md, err := os.ReadFile(filepath.Join(dir, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	checkMarkdown(t, rep, string(md))

	for _, f := range rep.PlotFiles() {
		t.Run(f, func(t *testing.T) {
			img := readPNG(t, filepath.Join(dir, f))
			if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 250 {
				t.Errorf("plot is %v", b)
			}
			for _, v := range rep.variants() {
				if n := countColour(img, rep.styleOf(v).color); n < 50 {
					t.Errorf("%s's colour covers %d pixels: its line is missing", rep.label(v), n)
				}
			}
		})
	}
	// Every line has a legend entry and a colour of its own.
	labels, colours := make(map[string]bool), make(map[color.Color]bool)
	for _, v := range rep.variants() {
		labels[rep.label(v)], colours[rep.styleOf(v).color] = true, true
	}
	if n := len(rep.variants()); len(labels) != n || len(colours) != n {
		t.Errorf("%d lines with %d distinct legend labels and %d colours", n, len(labels), len(colours))
	}
	return rep
}

// A report recorded before queue counts reads as one-queue synguard and
// looks as it did: plain "synguard" in the reading and the legends.
func TestRecordedReportBeforeQueues(t *testing.T) {
	rep, err := LoadReport(recordedReport)
	if err != nil {
		t.Fatal(err)
	}
	for i, run := range rep.Runs {
		want := 0
		if run.System == Synguard {
			want = 1
		}
		if run.Queues != want {
			t.Errorf("run %d (%s) has %d queues, want %d", i, run.System, run.Queues, want)
		}
	}
	want := []string{"synguard", "synproxy", "none"}
	var got []string
	for _, v := range rep.variants() {
		got = append(got, rep.label(v))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if r := rep.readQueues(Synguard); r != "" {
		t.Errorf("one queue count, yet a reading of queues: %q", r)
	}
}

// A report of synguard with one and two queues at every rate tells them
// apart: a table row each (checkRecordedReport), "synguard ×N queue(s)"
// in the reading and the legends, and a comparison at the highest load.
func TestRecordedReportTwoQueues(t *testing.T) {
	rep, err := LoadReport(recordedQueues)
	if err != nil {
		t.Fatal(err)
	}
	perRate := make(map[int][]int)
	for _, run := range rep.Runs {
		if run.System == Synguard {
			perRate[run.TargetPPS] = append(perRate[run.TargetPPS], run.Queues)
			if len(run.QueueReceived) != run.Queues {
				t.Errorf("synguard ×%d at %s: received by queue %v", run.Queues, rateName(run.TargetPPS), run.QueueReceived)
			}
		}
	}
	if len(perRate) != len(rep.Config.Rates) {
		t.Errorf("synguard at %d rates of %d", len(perRate), len(rep.Config.Rates))
	}
	for rate, qs := range perRate {
		slices.Sort(qs)
		if !slices.Equal(qs, []int{1, 2}) {
			t.Errorf("synguard at %s with queues %v, want [1 2]", rateName(rate), qs)
		}
	}
	var labels []string
	for _, v := range rep.variants() {
		labels = append(labels, rep.label(v))
	}
	if diff := cmp.Diff([]string{"synguard ×1 queue", "synguard ×2 queues", "synproxy", "none"}, labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	joined := strings.Join(rep.reading(), "\n")
	for _, want := range []string{"**synguard ×1 queue**: ", "**synguard ×2 queues**: ", "**Queues** (synguard at max): with 1 queue it answered",
		"; with 2, ", "its busiest queue receiving"} {
		if !strings.Contains(joined, want) {
			t.Errorf("reading lacks %q:\n%s", want, joined)
		}
	}
}

// checkMarkdown finds, in order, one table row per run carrying its
// numbers, and the other sections.
func checkMarkdown(t *testing.T, rep *Report, md string) {
	t.Helper()
	for _, want := range append([]string{"## Results", "## Reading", "## Baselines", "## Method", rep.Machine.Kernel}, rep.PlotFiles()...) {
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
		queues := "n/a"
		if run.System.IsSynguard() {
			queues = fmt.Sprint(run.Queues)
		}
		replies := fmtCount(run.SynackPPS)
		if rep.attack() == KindACK {
			replies = fmtCount(run.BackendACKPPS)
		}
		prefix := fmt.Sprintf("| %s | %s | %s | %s | %s | %s | ", rateName(run.TargetPPS), run.System, queues, run.Path, fmtCount(run.OfferedPPS), replies)
		if !strings.HasPrefix(rows[i], prefix) {
			t.Errorf("row %d is %q, want it to start %q", i, rows[i], prefix)
		}
		if !strings.Contains(rows[i], fmt.Sprintf("(%d/%d)", run.LegitOK, run.LegitAttempts)) {
			t.Errorf("row %d lacks the legitimate client counts: %q", i, rows[i])
		}
	}
	for _, v := range rep.variants() {
		if !strings.Contains(md, "- **"+rep.label(v)+"**: ") {
			t.Errorf("the reading says nothing about %s", rep.label(v))
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

// countColour counts the pixels of colour c, or within a few levels of it
// in each channel: a thin line drawn at a slant is mostly antialiased.
func countColour(img image.Image, c color.Color) int {
	const tolerance = 16 << 8 // of 0xffff
	near := func(a, b uint32) bool { return a <= b+tolerance && b <= a+tolerance }
	r0, g0, b0, _ := c.RGBA()
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r, r0) && near(g, g0) && near(bl, b0) {
				n++
			}
		}
	}
	return n
}

// The results table, exactly, for a small report: the kernel systems have
// no queue and no process of their own, the generator's maximum sorts
// last, synguard's queue counts are rows of their own, fewest first, and
// synguard-nfqueue follows synguard. The path column says how each run
// handled the flood.
func TestTableMarkdown(t *testing.T) {
	rep := &Report{Runs: []RunResult{
		{System: None, Path: PathKernel, TargetPPS: 0, OfferedPPS: 210_129.4, SynackPPS: 211_624, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 0.4, HandshakeP99ms: 1.48, TotalP50ms: 0.78, TotalP99ms: 3.98, CPUusPerSYN: 3.52, OtherLoad: 0.41,
			LegitSYNRetrans: &SYNRetrans{}},
		{System: SynguardNFQueue, Path: PathNFQueue, Queues: 1, TargetPPS: 100_000, OfferedPPS: 99_991, SynackPPS: 99_991, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 0.5, HandshakeP99ms: 2, TotalP50ms: 1.2, TotalP99ms: 4, CPUusPerSYN: 4.4, GatewayRSSMB: 19.4, OtherLoad: 0.02},
		{System: Synguard, Path: PathXDP, Queues: 2, TargetPPS: 100_000, OfferedPPS: 99_990, SynackPPS: 83_120, LegitOK: 99, LegitAttempts: 100, LegitSuccess: 0.99,
			HandshakeP50ms: 1.5, HandshakeP99ms: 1030, TotalP50ms: 3.1, TotalP99ms: 1200, CPUusPerSYN: 7.25, QueueDrops: 84_350, GatewayRSSMB: 24.2, OtherLoad: 0.05},
		{System: Synguard, Path: PathNFQueue, Queues: 1, TargetPPS: 100_000, OfferedPPS: 99_989, SynackPPS: 51_916, LegitOK: 94, LegitAttempts: 100, LegitSuccess: 0.94,
			HandshakeP50ms: 80.74, HandshakeP99ms: 1107.2, TotalP50ms: 247, TotalP99ms: 1996, CPUusPerSYN: 10.42, QueueDrops: 240_426, GatewayRSSMB: 21.84, OtherLoad: 0.03,
			LegitSYNRetrans: &SYNRetrans{Clients: 7, Share: 0.07, SYNs: 9}},
		{System: Synproxy, TargetPPS: 100_000, OfferedPPS: 99_986, SynackPPS: 99_986, LegitOK: 0, LegitAttempts: 100,
			CPUusPerSYN: -0.5},
	}}
	var b strings.Builder
	if err := rep.TableMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	want := `| target | system | queues | path | offered SYN/s | SYN-ACK/s | answered | legit ok | SYN retransmitted | handshake p50 / p99 | request p50 / p99 | CPU µs/SYN | queue drops | peak RSS | other load |
|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 100000/s | synguard | 1 | nfqueue | 99,989 | 51,916 | 51.9% | 94.0% (94/100) | 7 (7.0%) | 81 / 1107 ms | 247 / 1996 ms | 10.42 | 240,426 | 21.8 MiB | 3% |
| 100000/s | synguard | 2 | xdp | 99,990 | 83,120 | 83.1% | 99.0% (99/100) | – | 1.50 / 1030 ms | 3.10 / 1200 ms | 7.25 | 84,350 | 24.2 MiB | 5% |
| 100000/s | synguard-nfqueue | 1 | nfqueue | 99,991 | 99,991 | 100.0% | 100.0% (100/100) | – | 0.50 / 2.00 ms | 1.20 / 4.00 ms | 4.40 | 0 | 19.4 MiB | 2% |
| 100000/s | synproxy | n/a | kernel | 99,986 | 99,986 | 100.0% | 0.0% (0/100) | – | – / – ms | – / – ms | -0.50 | n/a | n/a | 0% |
| max | none | n/a | kernel | 210,129 | 211,624 | 100.7% | 100.0% (100/100) | 0 (0.0%) | 0.40 / 1.48 ms | 0.78 / 3.98 ms | 3.52 | n/a | n/a | 41% |
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

// A forged-ACK flood's table has no SYN-ACKs and no answered share: the
// forged ACKs offered, those that reached the backend, the RSTs the flood
// drew back and the CPU per forged ACK.
func TestTableMarkdownACK(t *testing.T) {
	rep := &Report{Attack: KindACK, Runs: []RunResult{
		{System: None, Path: PathKernel, TargetPPS: 20_000, OfferedPPS: 20_001, BackendACKPPS: 20_001, RSTPPS: 19_990, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 0.3, HandshakeP99ms: 0.9, TotalP50ms: 0.6, TotalP99ms: 1.5, CPUusPerACK: 2.1, CPUusPerSYN: 99},
		{System: Synguard, Path: PathXDP, Queues: 1, TargetPPS: 20_000, OfferedPPS: 20_002, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 0.4, HandshakeP99ms: 1.1, TotalP50ms: 1, TotalP99ms: 2, CPUusPerACK: -0.12, GatewayRSSMB: 20.5},
		{System: SynguardNFQueue, Path: PathNFQueue, Queues: 1, TargetPPS: 20_000, OfferedPPS: 19_999, BackendACKPPS: 0.2, LegitOK: 99, LegitAttempts: 100, LegitSuccess: 0.99,
			HandshakeP50ms: 0.5, HandshakeP99ms: 1.3, TotalP50ms: 1.1, TotalP99ms: 2.5, CPUusPerACK: 3.25, QueueDrops: 12, GatewayRSSMB: 19.1},
	}}
	var b strings.Builder
	if err := rep.TableMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	want := `| target | system | queues | path | forged ACK/s offered | reached backend/s | RST/s to sources | legit ok | SYN retransmitted | handshake p50 / p99 | request p50 / p99 | CPU µs/ACK | queue drops | peak RSS | other load |
|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 20000/s | synguard | 1 | xdp | 20,002 | 0 | 0 | 100.0% (100/100) | – | 0.40 / 1.10 ms | 1.00 / 2.00 ms | -0.12 | 0 | 20.5 MiB | 0% |
| 20000/s | synguard-nfqueue | 1 | nfqueue | 19,999 | 0 | 0 | 99.0% (99/100) | – | 0.50 / 1.30 ms | 1.10 / 2.50 ms | 3.25 | 12 | 19.1 MiB | 0% |
| 20000/s | none | n/a | kernel | 20,001 | 20,001 | 19,990 | 100.0% (100/100) | – | 0.30 / 0.90 ms | 0.60 / 1.50 ms | 2.10 | n/a | n/a | 0% |
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"answered", "SYN-ACK/s", "CPU µs/SYN", "synack.png", "SYNs offered", "SYN/s"} {
		if strings.Contains(md.String(), bad) {
			t.Errorf("an ACK flood's report.md says %q", bad)
		}
	}
	for _, want := range []string{"# synguard bench: forged-ACK flood, side by side", "(backend.png)", "CPU µs/ACK, all in",
		"--tcp-flags SYN,ACK,RST,FIN ACK -j DROP", "**Reached backend/s**", "machine_cpu_us_per_ack"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("an ACK flood's report.md lacks %q", want)
		}
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

// The reading sets each system's request p50 against SYNPROXY's, rate
// by rate, beside the baseline's, which a report recorded before the
// baselines' request p50 lacks.
func TestReadingAgainstSynproxy(t *testing.T) {
	rep := &Report{
		Runs: []RunResult{
			{System: Synguard, Queues: 1, TargetPPS: 0, TotalP50ms: 0.63},
			{System: Synguard, Queues: 1, TargetPPS: 10_000, TotalP50ms: 0.66},
			{System: Synproxy, TargetPPS: 10_000, TotalP50ms: 0.60},
			{System: Synproxy, TargetPPS: 0, TotalP50ms: 0.70},
			{System: None, TargetPPS: 10_000, TotalP50ms: 0.9},
		},
		Baselines: []Baseline{
			{TargetPPS: 0, TotalP50ms: 0.77},
			{TargetPPS: 10_000, TotalP50ms: 0.57},
		},
	}
	want := "**Request p50 against SYNPROXY's** (at 10000/s, max): synguard 1.10, 0.90; none 1.50, n/a; the baseline 0.95, 1.10."
	if got := rep.readAgainstSynproxy(); !strings.HasPrefix(got, want) {
		t.Errorf("reading:\n%s\nwant it to begin:\n%s", got, want)
	}
	if !slices.ContainsFunc(rep.reading(), func(line string) bool { return strings.HasPrefix(line, want) }) {
		t.Errorf("reading lacks the comparison:\n%s", strings.Join(rep.reading(), "\n"))
	}
	dir, again := rewrite(t, rep)
	if got := again.readAgainstSynproxy(); !strings.HasPrefix(got, want) {
		t.Errorf("read back from %s: %s", dir, got)
	}
	old := *rep
	old.Baselines = []Baseline{{TargetPPS: 0}, {TargetPPS: 10_000}}
	if got := old.readAgainstSynproxy(); got != "" {
		t.Errorf("baselines without a request p50: %s", got)
	}
	old = *rep
	old.Runs = slices.DeleteFunc(slices.Clone(rep.Runs), func(run RunResult) bool { return run.System == Synproxy })
	if got := old.readAgainstSynproxy(); got != "" {
		t.Errorf("without SYNPROXY: %s", got)
	}
}

// The reading compares queue counts at the highest load, from the numbers.
func TestReadingQueues(t *testing.T) {
	rep := &Report{Machine: Machine{CPUs: 2}, Runs: []RunResult{
		{System: Synguard, Queues: 2, TargetPPS: 0, OfferedPPS: 200_000, SynackPPS: 150_000, LegitSuccess: 1,
			QueueDrops: 1_000, QueueReceived: []uint64{60_000, 40_000}},
		{System: Synguard, Queues: 1, TargetPPS: 0, OfferedPPS: 200_000, SynackPPS: 100_000, LegitSuccess: 1,
			QueueDrops: 500_000, QueueReceived: []uint64{100_000}},
		{System: Synguard, Queues: 2, TargetPPS: 20_000, OfferedPPS: 20_000, SynackPPS: 20_000, LegitSuccess: 1},
		{System: None, TargetPPS: 0, OfferedPPS: 200_000, SynackPPS: 200_000, LegitSuccess: 1},
	}}
	want := "**Queues** (synguard at max): with 1 queue it answered 100,000 SYN-ACK/s of 200,000 offered (50%; 500,000 queue drops); " +
		"with 2, 150,000 of 200,000 (75%; 1,000 queue drops), 1.50× the SYN-ACKs of 1, its busiest queue receiving 60% of the packets. " +
		"This machine has 2 CPUs"
	if got := rep.readQueues(Synguard); !strings.HasPrefix(got, want) {
		t.Errorf("queues reading\n%q\nwant it to start\n%q", got, want)
	}
	joined := strings.Join(rep.reading(), "\n")
	for _, want := range []string{"**synguard ×1 queue**: answered less than 95%", "**synguard ×2 queues**: answered at least 95% of the SYNs up to 20,000",
		"At the highest load: synguard ×1 queue 100,000 SYN-ACK/s", "synguard ×2 queues 150,000 SYN-ACK/s", "none 200,000 SYN-ACK/s"} {
		if !strings.Contains(joined, want) {
			t.Errorf("reading lacks %q:\n%s", want, joined)
		}
	}
}

// writeReport writes doc as a report.json in a fresh directory and
// returns its path.
func writeReport(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// "queues" survives a round trip, is read as one for synguard runs
// recorded without it, and must be 0 for the kernel systems.
func TestLoadReportQueues(t *testing.T) {
	rep, err := LoadReport(writeReport(t, `{"runs":[{"system":"synguard","target_pps":0},{"system":"synguard","queues":2},{"system":"none"},{"system":"synproxy","queues":0}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, run := range rep.Runs {
		got = append(got, run.Queues)
	}
	if want := []int{1, 2, 0, 0}; !slices.Equal(got, want) {
		t.Errorf("queues read %v, want %v", got, want)
	}
	out := t.TempDir()
	if err := rep.Write(out); err != nil {
		t.Fatal(err)
	}
	again, err := LoadReport(filepath.Join(out, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rep, again); diff != "" {
		t.Errorf("round trip (-first +again):\n%s", diff)
	}
	for _, tt := range []struct{ json, want string }{
		{`{"runs":[{"system":"synproxy","queues":2}]}`, "synproxy has no queues"},
		{`{"runs":[{"system":"synguard","queues":-1}]}`, "-1 queues"},
		{`{"runs":[{"system":"synguard","queues":1000}]}`, "1000 queues"},
	} {
		if _, err := LoadReport(writeReport(t, tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.json, err, tt.want)
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

// A run with --synguard-args says so in report.md and keeps them in
// report.json.
func TestReportNamesSynguardArgs(t *testing.T) {
	rep, err := LoadReport(recordedReport)
	if err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md.String(), "beyond the benchmark's own arguments") {
		t.Fatal("report.md names synguard arguments the run did not have")
	}
	rep.Config.SynguardArgs = []string{"--reply-path", "route"}
	md.Reset()
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "synguard ran with `--reply-path route`") {
		t.Fatalf("report.md does not name the synguard arguments:\n%.600s", md.String())
	}
	_, again := rewrite(t, rep)
	if !slices.Equal(again.Config.SynguardArgs, rep.Config.SynguardArgs) {
		t.Fatalf("report.json synguard_args %q, want %q", again.Config.SynguardArgs, rep.Config.SynguardArgs)
	}
}

// A recording with synguard's XDP fast path: synguard's runs went through
// XDP, synguard-nfqueue's through the queue, and report.md says so in the
// table and the reading.
func TestRecordedReportXDP(t *testing.T) {
	rep, err := LoadReport(recordedXDP)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Attack != KindSYN {
		t.Errorf("attack %q", rep.Attack)
	}
	var labels []string
	for _, v := range rep.variants() {
		labels = append(labels, rep.label(v))
	}
	if diff := cmp.Diff([]string{"synguard", "synguard-nfqueue", "synproxy", "none"}, labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	for _, run := range rep.Runs {
		want := map[System]string{Synguard: PathXDP, SynguardNFQueue: PathNFQueue, Synproxy: PathKernel, None: PathKernel}[run.System]
		if run.Path != want {
			t.Errorf("%s at %s: path %q, want %q", run.System, rateName(run.TargetPPS), run.Path, want)
		}
		if run.System == Synguard && run.XDPTX < run.EngineSYNs*9/10 {
			t.Errorf("synguard at %s: XDP sent %d SYN-ACKs, the engine counted %d SYNs", rateName(run.TargetPPS), run.XDPTX, run.EngineSYNs)
		}
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 20000/s | synguard | 1 | xdp | ", "| max | synguard-nfqueue | 1 | nfqueue | ", "| max | synproxy | n/a | kernel | ",
		"- **synguard**: answered at least 95%", "Path: xdp in every run.", "- **synguard-nfqueue**: ", "Path: nfqueue in every run."} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
}

// A recording of a forged-ACK flood: every run has the ACK figures, the
// reading says which systems kept the flood from the backend, and
// nothing claims SYN-ACKs answered.
func TestRecordedReportACK(t *testing.T) {
	rep, err := LoadReport(recordedACK)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Attack != KindACK {
		t.Fatalf("attack %q, want ack", rep.Attack)
	}
	for _, run := range rep.Runs {
		if run.ACKsSent == 0 || run.SYNsSent != 0 || run.SynackPPS != 0 || run.CPUusPerSYN != 0 || run.CPUusPerACK == 0 {
			t.Errorf("%s at %s: ACKs %d, SYNs %d, SYN-ACK/s %.0f, CPU/SYN %.2f, CPU/ACK %.2f", run.System, rateName(run.TargetPPS),
				run.ACKsSent, run.SYNsSent, run.SynackPPS, run.CPUusPerSYN, run.CPUusPerACK)
		}
		if (run.System == None) != (run.BackendACKPPS > 0.9*run.OfferedPPS) {
			t.Errorf("%s at %s: %.0f of %.0f forged ACK/s reached the backend", run.System, rateName(run.TargetPPS), run.BackendACKPPS, run.OfferedPPS)
		}
	}
	if got := rep.PlotFiles(); !slices.Equal(got, []string{PlotBackend, PlotLegit, PlotCPU}) {
		t.Errorf("plots %v", got)
	}
	joined := strings.Join(rep.reading(), "\n")
	for _, want := range []string{
		"**synguard**: kept the forged ACKs from the backend at every load",
		"**synguard-nfqueue**: kept the forged ACKs from the backend at every load",
		"**synproxy**: kept the forged ACKs from the backend at every load",
		"**none**: let every forged ACK through to the backend, at every load",
		"the backend replied with up to",
		"CPU per forged ACK",
		"Path: xdp in every run", "Path: nfqueue in every run",
		"At the highest load: synguard let 0 of ",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("reading lacks %q:\n%s", want, joined)
		}
	}
	for _, bad := range []string{"SYN-ACK", "answered", "SYN/s"} {
		if strings.Contains(joined, bad) {
			t.Errorf("an ACK flood's reading says %q:\n%s", bad, joined)
		}
	}
}

// "path" is kept as recorded, read as nfqueue (synguard) or kernel for
// runs recorded before it, and must fit the system; "attack" is syn when
// absent and must be known.
func TestLoadReportPathAndAttack(t *testing.T) {
	rep, err := LoadReport(writeReport(t, `{"runs":[{"system":"synguard"},{"system":"synguard","path":"xdp"},{"system":"synguard-nfqueue"},{"system":"none"}],"baselines":[{}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, run := range rep.Runs {
		got = append(got, run.Path)
	}
	if want := []string{PathNFQueue, PathXDP, PathNFQueue, PathKernel}; !slices.Equal(got, want) {
		t.Errorf("paths %v, want %v", got, want)
	}
	if rep.Attack != KindSYN || rep.Baselines[0].Path != PathKernel || rep.Runs[2].Queues != 1 {
		t.Errorf("attack %q, baseline path %q, synguard-nfqueue queues %d", rep.Attack, rep.Baselines[0].Path, rep.Runs[2].Queues)
	}
	for _, tt := range []struct{ json, want string }{
		{`{"runs":[{"system":"synproxy","path":"xdp"}]}`, `synproxy with path "xdp"`},
		{`{"runs":[{"system":"synguard","path":"kernel"}]}`, `synguard with path "kernel"`},
		{`{"runs":[{"system":"synguard-nfqueue","path":"dpdk"}]}`, `synguard-nfqueue with path "dpdk"`},
		{`{"runs":[{"system":"synguard-nfqueue","queues":-1}]}`, "-1 queues"},
		{`{"attack":"udp","runs":[]}`, `"udp"`},
	} {
		if _, err := LoadReport(writeReport(t, tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.json, err, tt.want)
		}
	}
}

// report.json carries the attack's keys only: a SYN flood's runs and
// baselines have no ACK figures, a forged-ACK flood's no SYN figures, and
// each reads back the same.
func TestReportJSONKeysByAttack(t *testing.T) {
	run := RunResult{System: Synguard, Queues: 1, Path: PathXDP, SYNsSent: 5, SynackPPS: 1, CPUusPerSYN: 2, MachineCPUusSYN: 3,
		ProcessCPUusSYN: 4, EngineSYNs: 6, ACKsSent: 7, BackendACKPPS: 8, RSTPPS: 9, CPUusPerACK: 10, MachineCPUusACK: 11, ProcessCPUusACK: 12}
	base := Baseline{Path: PathKernel, SYNsSent: 5, SynackPPS: 1, CPUusPerSYN: 2, ACKsSent: 7, BackendACKPPS: 8, RSTPPS: 9, CPUusPerACK: 10}
	synKeys := []string{"syns_sent", "synack_pps", "cpu_us_per_syn", "machine_cpu_us_per_syn", "process_cpu_us_per_syn", "engine_syns"}
	ackKeys := []string{"acks_sent", "backend_ack_pps", "rst_pps", "cpu_us_per_ack", "machine_cpu_us_per_ack", "process_cpu_us_per_ack"}
	for _, tt := range []struct {
		attack    Kind
		have, not []string
	}{
		{KindSYN, synKeys, ackKeys},
		{KindACK, ackKeys, synKeys},
	} {
		t.Run(string(tt.attack), func(t *testing.T) {
			b, err := json.Marshal(&Report{Attack: tt.attack, Runs: []RunResult{run}, Baselines: []Baseline{base}})
			if err != nil {
				t.Fatal(err)
			}
			var raw struct {
				Attack    string           `json:"attack"`
				Runs      []map[string]any `json:"runs"`
				Baselines []map[string]any `json:"baselines"`
			}
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if raw.Attack != string(tt.attack) || raw.Runs[0]["path"] != PathXDP || raw.Baselines[0]["path"] != PathKernel {
				t.Errorf("attack %q, paths %v, %v", raw.Attack, raw.Runs[0]["path"], raw.Baselines[0]["path"])
			}
			for _, k := range tt.have {
				if _, ok := raw.Runs[0][k]; !ok {
					t.Errorf("run lacks %q", k)
				}
			}
			for _, k := range tt.not {
				if _, ok := raw.Runs[0][k]; ok {
					t.Errorf("run has %q", k)
				}
				if _, ok := raw.Baselines[0][k]; ok {
					t.Errorf("baseline has %q", k)
				}
			}
			for _, k := range tt.have[:3] {
				if _, ok := raw.Baselines[0][k]; !ok && k != "machine_cpu_us_per_syn" {
					t.Errorf("baseline lacks %q", k)
				}
			}
		})
	}
}

// ttfbReport is a report with the clients 20 ms away: synguard and none,
// without a flood and at one rate.
func ttfbReport() *Report {
	return &Report{
		Family: IPv4,
		Attack: KindSYN,
		Config: ReportConfig{ClientRTTms: 20, MeasuredRTTms: 20.31},
		NoFlood: []NoFloodRun{
			{System: None, Path: PathKernel, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1, HandshakeP50ms: 20.6, TTFBP50ms: 41.2, TTFBP90ms: 42.5, TTFBP99ms: 44},
			{System: Synguard, Queues: 1, Path: PathTC, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1, HandshakeP50ms: 20.7, TTFBP50ms: 64.4, TTFBP90ms: 70.1, TTFBP99ms: 76.9},
		},
		Baselines: []Baseline{{Path: PathKernel, TargetPPS: 20_000, OfferedPPS: 20_000, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
			HandshakeP50ms: 20.5, TTFBP50ms: 41.5, TTFBP90ms: 43, TTFBP99ms: 45}},
		Runs: []RunResult{
			{System: None, Path: PathKernel, TargetPPS: 20_000, OfferedPPS: 20_000, LegitOK: 99, LegitAttempts: 100, LegitSuccess: 0.99,
				HandshakeP50ms: 20.9, TTFBP50ms: 42, TTFBP90ms: 45, TTFBP99ms: 1050},
			{System: Synguard, Queues: 1, Path: PathTC, TargetPPS: 20_000, OfferedPPS: 20_000, LegitOK: 100, LegitAttempts: 100, LegitSuccess: 1,
				HandshakeP50ms: 20.8, TTFBP50ms: 65, TTFBP90ms: 71, TTFBP99ms: 80},
		},
	}
}

// report.md's time-to-first-byte table has each system without a flood,
// then at each rate, with the p50 in round trips; the reading compares
// them.
func TestTTFBMarkdown(t *testing.T) {
	rep := ttfbReport()
	var b bytes.Buffer
	rep.writeTTFB(&b)
	table := b.String()[strings.Index(b.String(), "| system"):]
	want := `| system | queues | flood | legit ok | handshake p50 | first byte p50 / p90 / p99 | p50 in RTTs |
|---|---:|---|---:|---:|---:|---:|
| baseline | n/a | 20000/s | 100.0% (100/100) | 20 ms | 42 / 43 / 45 ms | 2.1 |
| synguard | 1 | no flood | 100.0% (100/100) | 21 ms | 64 / 70 / 77 ms | 3.2 |
| synguard | 1 | 20000/s | 100.0% (100/100) | 21 ms | 65 / 71 / 80 ms | 3.2 |
| none | n/a | no flood | 100.0% (100/100) | 21 ms | 41 / 42 / 44 ms | 2.1 |
| none | n/a | 20000/s | 99.0% (99/100) | 21 ms | 42 / 45 / 1050 ms | 2.1 |

`
	if diff := cmp.Diff(want, table); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if !strings.Contains(b.String(), "a round trip of 20 ms from the gateway (`--client-rtt`; 20.31 ms measured") ||
		!strings.Contains(b.String(), "The baseline rows are the same clients with the flood dropped") {
		t.Errorf("no client RTT in:\n%s", b.String())
	}
	wantReading := "**Time to first byte** (p50) with the clients 20 ms away, without a flood: none 41 ms (2.1 RTT), synguard 64 ms (3.2 RTT); " +
		"under the flood at 20000/s: synguard 65 ms (3.2 RTT), none 42 ms (2.1 RTT)."
	if got := rep.readTTFB(); got != wantReading {
		t.Errorf("reading:\n got %s\nwant %s", got, wantReading)
	}

	// Without a client RTT there are no round trips to count in, and no
	// plot; a report recorded before the time to first byte has no table.
	rep.Config.ClientRTTms, rep.NoFlood = 0, nil
	b.Reset()
	rep.writeTTFB(&b)
	if !strings.Contains(b.String(), "| synguard | 1 | 20000/s | 100.0% (100/100) | 21 ms | 65 / 71 / 80 ms | n/a |") || strings.Contains(b.String(), "| none | n/a | no flood |") {
		t.Errorf("without a client RTT:\n%s", b.String())
	}
	if rep.readTTFB() != "" || slices.Contains(rep.PlotFiles(), PlotTTFB) {
		t.Errorf("reading %q, plots %v without a client RTT", rep.readTTFB(), rep.PlotFiles())
	}
	old, err := LoadReport(recordedXDP)
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	old.writeTTFB(&b)
	if b.Len() != 0 {
		t.Errorf("a report without first-byte times has a table:\n%s", b.String())
	}
}

// With a client RTT the report draws ttfb.png: every system's line, and
// the 2 and 3 round-trip marks; report.json reads back the same.
func TestTTFBPlotAndRoundTrip(t *testing.T) {
	rep := ttfbReport()
	if !slices.Contains(rep.PlotFiles(), PlotTTFB) {
		t.Fatalf("plots %v", rep.PlotFiles())
	}
	dir, again := rewrite(t, rep)
	if diff := cmp.Diff(rep, again); diff != "" {
		t.Errorf("round trip (-written +read):\n%s", diff)
	}
	img := readPNG(t, filepath.Join(dir, PlotTTFB))
	for _, sys := range []System{Synguard, None} {
		if n := countColour(img, systemStyle[sys].color); n < 50 {
			t.Errorf("%s: %d pixels of its colour in %s", sys, n, PlotTTFB)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Time to first byte", "![Time to first byte against offered load](ttfb.png)", "- **Client RTT.**"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md has no %q", want)
		}
	}
}

func TestLoadReportNoFloodErrors(t *testing.T) {
	for _, tt := range []struct{ json, want string }{
		{`{"no_flood":[{"system":"pf"}]}`, `run without a flood 0: unknown system "pf"`},
		{`{"no_flood":[{"system":"synguard","queues":0}]}`, "synguard with 0 queues"},
		{`{"no_flood":[{"system":"none","queues":1}]}`, "none with 1 queues"},
		{`{"config":{"client_rtt_ms":-20}}`, "negative client RTT"},
	} {
		if _, err := LoadReport(writeReport(t, tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.json, err, tt.want)
		}
	}
}

// A recording with the clients 20 ms away: every system without a flood
// and at every rate, with its time to first byte; report.md's table has a
// row for each.
func TestRecordedReportClientRTT(t *testing.T) {
	rep := checkRecordedReport(t, recordedRTT)
	if rep.Config.ClientRTTms != 20 || rep.Config.MeasuredRTTms < 20 || len(rep.NoFlood) != len(AllSystems) {
		t.Fatalf("client RTT %v ms, measured %v ms, %d runs without a flood", rep.Config.ClientRTTms, rep.Config.MeasuredRTTms, len(rep.NoFlood))
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, n := range rep.NoFlood {
		if n.TTFBP50ms < 40 {
			t.Errorf("%s without a flood: first byte p50 %.1f ms, under two round trips", n.System, n.TTFBP50ms)
		}
		queues := "n/a"
		if n.System.IsSynguard() {
			queues = "1"
		}
		for _, flood := range []string{"no flood", "20000/s", "100000/s", "max"} {
			if row := fmt.Sprintf("| %s | %s | %s | 100.0%% (100/100) |", n.System, queues, flood); !strings.Contains(md.String(), row) {
				t.Errorf("report.md has no row starting %q", row)
			}
		}
	}
	for _, run := range rep.Runs {
		if run.TTFBP50ms < 40 || run.TTFBP90ms < run.TTFBP50ms || run.TTFBP99ms < run.TTFBP90ms {
			t.Errorf("%s at %s: first byte %.1f/%.1f/%.1f ms", run.System, rateName(run.TargetPPS), run.TTFBP50ms, run.TTFBP90ms, run.TTFBP99ms)
		}
	}
	if !slices.Contains(rep.PlotFiles(), PlotTTFB) {
		t.Errorf("plots %v", rep.PlotFiles())
	}
}

// A run's legitimate SYN retransmits reach report.json (zero kept, absent
// for reports recorded before them), the table and the reading.
func TestSYNRetransReport(t *testing.T) {
	rep := &Report{Family: IPv4, Attack: KindSYN, Runs: []RunResult{
		{System: Synguard, Queues: 1, Path: PathXDP, TargetPPS: 100_000, OfferedPPS: 100_000, SynackPPS: 100_000, LegitSuccess: 1, LegitOK: 100, LegitAttempts: 100,
			LegitSYNRetrans: &SYNRetrans{Clients: 1, Share: 0.01, SYNs: 1}},
		{System: Synguard, Queues: 1, Path: PathXDP, TargetPPS: 0, OfferedPPS: 250_000, SynackPPS: 200_000, LegitSuccess: 0.99, LegitOK: 99, LegitAttempts: 100,
			QueueDrops: 5_000, LegitSYNRetrans: &SYNRetrans{Clients: 12, Share: 0.12, SYNs: 14}},
		{System: Synproxy, Path: PathKernel, TargetPPS: 100_000, OfferedPPS: 100_000, SynackPPS: 100_000, LegitSuccess: 1, LegitOK: 100, LegitAttempts: 100,
			LegitSYNRetrans: &SYNRetrans{}},
		{System: None, Path: PathKernel, TargetPPS: 100_000, OfferedPPS: 100_000, SynackPPS: 100_000, LegitSuccess: 1, LegitOK: 100, LegitAttempts: 100},
	}, Baselines: []Baseline{{Path: PathKernel, TargetPPS: 100_000, LegitSYNRetrans: &SYNRetrans{}}}}

	joined := strings.Join(rep.reading(), "\n")
	for _, want := range []string{
		"13 of them had to send their SYN again, each waiting at least 1 s (most at 250,000 SYN/s offered: 12 of 100, 12.0%)",
		"**synproxy**: answered at least 95% of the SYNs at every load, up to 100,000 SYN/s. Legitimate clients: at worst 100% succeeded (at 100,000 SYN/s offered, handshake p99 – ms); none had to send its SYN again",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("reading lacks %q:\n%s", want, joined)
		}
	}
	if i := strings.Index(joined, "**none**"); i < 0 || strings.Contains(joined[i:], "SYN again") {
		t.Errorf("a run without the figure is read as measured:\n%s", joined)
	}

	var table strings.Builder
	if err := rep.TableMarkdown(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 99.0% (99/100) | 12 (12.0%) |", "| 100.0% (100/100) | 0 (0.0%) |", "| 100.0% (100/100) | – |"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	dir, again := rewrite(t, rep)
	if diff := cmp.Diff(rep, again); diff != "" {
		t.Errorf("round trip (-written +read):\n%s", diff)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	var keys struct {
		Runs []map[string]json.RawMessage `json:"runs"`
	}
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{`{"clients":1,"share":0.01,"syns":1}`, `{"clients":12,"share":0.12,"syns":14}`, `{"clients":0,"share":0,"syns":0}`, ""} {
		var got bytes.Buffer
		if v := keys.Runs[i]["legit_syn_retrans"]; v != nil {
			if err := json.Compact(&got, v); err != nil {
				t.Fatal(err)
			}
		}
		if got.String() != want {
			t.Errorf("run %d: legit_syn_retrans %s, want %q", i, got.String(), want)
		}
	}
}

// A report measured with the kernel timing BPF programs says so where it
// names the machine, and the file read back keeps it.
func TestMachineBPFStats(t *testing.T) {
	m := Machine{CPUs: 2, Kernel: "6.18"}
	if got := m.describe(); strings.Contains(got, "BPF") {
		t.Errorf("without stats: %q mentions them", got)
	}
	m.BPFStats = true
	if got, want := m.describe(), "2 CPUs, Linux 6.18, BPF run-time stats on (synguard's programs slowed)"; got != want {
		t.Errorf("with stats: %q, want %q", got, want)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Machine
	if err := json.Unmarshal(b, &back); err != nil || !back.BPFStats || !strings.Contains(string(b), `"bpf_stats_enabled":true`) {
		t.Errorf("%s read back as %+v, %v", b, back, err)
	}
}

// With rounds, report.md lists each run's rounds and each round's ratio
// to SYNPROXY's same round; one round writes no such section, and the
// rounds read back from report.json.
func TestRoundsMarkdown(t *testing.T) {
	rep := &Report{Attack: KindACK, Config: ReportConfig{Rounds: 2, DurationS: 10}, Runs: []RunResult{
		{System: Synproxy, Path: PathKernel, TargetPPS: 10_000, CPUusPerACK: 1.1, TotalP50ms: 0.5,
			Rounds: []Round{{CPUus: 1.0, TotalP50ms: 0.4, HandshakeP99ms: 1}, {CPUus: 1.2, TotalP50ms: 0.6, HandshakeP99ms: 2}}},
		{System: Synguard, Path: PathTC, Queues: 1, TargetPPS: 10_000, CPUusPerACK: 0.5, TotalP50ms: 0.5,
			Rounds: []Round{{CPUus: 0.45, TotalP50ms: 0.42, HandshakeP99ms: 1.5}, {CPUus: 0.6, TotalP50ms: 0.54, HandshakeP99ms: 2.5}}},
		{System: None, Path: PathKernel, TargetPPS: 0, CPUusPerACK: 2,
			Rounds: []Round{{CPUus: 2, TotalP50ms: 0.3}, {CPUus: 2.2, TotalP50ms: 0.35}}},
	}}
	var b bytes.Buffer
	rep.writeRounds(&b)
	want := `| target | system | CPU µs/ACK | ratio to SYNPROXY | request p50 ms | ratio to SYNPROXY | handshake p99 ms |
|---|---|---|---|---|---|---|
| 10000/s | synguard | 0.45 / 0.60 | 0.45 / 0.50 | 0.42 / 0.54 | 1.05 / 0.90 | 1.50 / 2.50 |
| 10000/s | synproxy | 1.00 / 1.20 | n/a | 0.40 / 0.60 | n/a | 1.00 / 2.00 |
| max | none | 2.00 / 2.20 | n/a | 0.30 / 0.35 | n/a | 0.00 / 0.00 |

`
	got := b.String()
	if i := strings.Index(got, "| target"); i < 0 || !strings.HasPrefix(got, "## Rounds\n\nEach rate was measured in 2 rounds") {
		t.Fatalf("rounds section:\n%s", got)
	} else if diff := cmp.Diff(want, got[i:]); diff != "" {
		t.Errorf("rounds table (-want +got):\n%s", diff)
	}
	dir, again := rewrite(t, rep)
	if !slices.Equal(again.Runs[1].Rounds, rep.Runs[1].Rounds) || again.Config.Rounds != 2 {
		t.Errorf("read back from %s: rounds %v, config %d", dir, again.Runs[1].Rounds, again.Config.Rounds)
	}
	rep.Config.Rounds = 1
	b.Reset()
	rep.writeRounds(&b)
	if b.Len() != 0 {
		t.Errorf("one round wrote:\n%s", b.String())
	}
}

// The server-first runs get a section of their own, sorted as the other
// tables are, which an old report without them does not have; report.json
// reads back the same.
func TestServerFirstMarkdown(t *testing.T) {
	rep := ttfbReport()
	rep.ServerFirst = []ServerFirstRun{
		{System: Synproxy, Path: PathKernel, LegitAttempts: 50, LegitOK: 50, LegitSuccess: 1, HandshakeP50ms: 0.3,
			GreetingP50ms: 1032, GreetingP90ms: 1040, GreetingP99ms: 1051, BackendACKsRejected: 50, BackendSYNACKsResent: 50},
		{System: Synguard, Queues: 1, Path: PathTC, LegitAttempts: 50, LegitOK: 50, LegitSuccess: 1, HandshakeP50ms: 0.4,
			GreetingP50ms: 0.45, GreetingP90ms: 0.6, GreetingP99ms: 0.9},
	}
	var b bytes.Buffer
	rep.writeServerFirst(&b)
	table := b.String()[strings.Index(b.String(), "| system"):]
	want := `| system | queues | legit ok | handshake p50 | greeting p50 / p90 / p99 | backend rejected ACKs | backend resent SYN-ACKs |
|---|---:|---:|---:|---:|---:|---:|
| synguard | 1 | 100.0% (50/50) | 0.40 ms | 0.45 / 0.60 / 0.90 ms | 0 | 0 |
| synproxy | n/a | 100.0% (50/50) | 0.30 ms | 1032 / 1040 / 1051 ms | 50 | 50 |

`
	if diff := cmp.Diff(want, table); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(b.String(), "## Clients of a protocol whose server speaks first\n\n") {
		t.Errorf("section starts %q", b.String()[:60])
	}

	wantReading := "**A server that speaks first** greeted its clients (p50, connect() to the greeting, no flood): " +
		"synguard 0.45 ms, synproxy 1032 ms (the backend rejected 50 of its ACKs)."
	if got := rep.readServerFirst(); got != wantReading {
		t.Errorf("reading:\n got %s\nwant %s", got, wantReading)
	}

	_, again := rewrite(t, rep)
	if diff := cmp.Diff(rep, again); diff != "" {
		t.Errorf("round trip (-written +read):\n%s", diff)
	}

	old, err := LoadReport(recordedXDP)
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	old.writeServerFirst(&b)
	if b.Len() != 0 || old.readServerFirst() != "" {
		t.Errorf("a report without server-first runs has a section or reading:\n%s%s", b.String(), old.readServerFirst())
	}
	for _, tt := range []struct{ json, want string }{
		{`{"server_first":[{"system":"pf"}]}`, `server-first run 0: unknown system "pf"`},
		{`{"server_first":[{"system":"synguard","queues":0}]}`, "synguard with 0 queues"},
		{`{"server_first":[{"system":"synproxy","queues":2}]}`, "synproxy with 2 queues"},
	} {
		if _, err := LoadReport(writeReport(t, tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.json, err, tt.want)
		}
	}
}
