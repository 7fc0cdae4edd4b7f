package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/bench"
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
		{"queues not a number", []string{"bench", "--queues", "1,two"}, `--queues: "two": want queue counts 1..64`},
		{"queues zero", []string{"bench", "--queues", "0"}, `--queues: "0": want queue counts 1..64`},
		{"queues negative", []string{"bench", "--queues", "-2"}, `"-2": want queue counts`},
		{"queues too many", []string{"bench", "--queues", "1,65"}, `"65": want queue counts 1..64`},
		{"queues empty", []string{"bench", "--queues", ""}, `--queues: "": want queue counts`},
		{"queues trailing comma", []string{"bench", "--queues", "1,"}, `--queues: "": want queue counts`},
		{"queues twice", []string{"bench", "--queues", "2,1,2"}, "queue count 2 listed twice"},
		{"queues without synguard", []string{"bench", "--systems", "synproxy,none", "--queues", "1,2"}, "apply to synguard and synguard-nfqueue, neither of which is among the systems"},
		{"bad attack", []string{"bench", "--attack", "rst"}, `bench --attack: "rst": want syn or ack`},
		{"attack in capitals", []string{"bench", "--attack", "ACK"}, `bench --attack: "ACK": want syn or ack`},
		{"empty attack", []string{"bench", "--attack", ""}, `bench --attack: "": want syn or ack`},
		{"nfqueue misspelt", []string{"bench", "--systems", "synguard,synguard-nfq"}, `unknown system "synguard-nfq" (want synguard, synguard-nfqueue, synproxy or none)`},
		{"flood bad kind", []string{"bench", "flood", "--kind", "fin", "--target", "203.0.113.2:80"}, `bench flood --kind: "fin": want syn or ack`},
		{"queues too many runs", []string{"bench", "--queues", "1,2,3,4,5,6,7,8,9,10"}, "× 3 rounds is more than 192 runs"},
		{"rounds zero", []string{"bench", "--rounds", "0"}, "bench --rounds: 0, want 1..10"},
		{"rounds too many", []string{"bench", "--rounds", "11"}, "11 rounds outside 1..10"},
		{"rounds not a number", []string{"bench", "--rounds", "three"}, "-rounds"},
		{"ipv6 not a bool", []string{"bench", "--ipv6=maybe"}, "-ipv6"},
		{"ipv6 with a bad value", []string{"bench", "--ipv6", "--probe-rate", "0"}, "probe rate 0"},
		{"client rtt not a duration", []string{"bench", "--client-rtt", "20"}, "-client-rtt"},
		{"client rtt negative", []string{"bench", "--client-rtt", "-20ms"}, "client RTT -20ms outside [0, 10s]"},
		{"client rtt past the probe timeout", []string{"bench", "--client-rtt", "1s"}, "a probe timeout of 3s is too short for a client RTT of 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := wantUsageError(t, tt.args, tt.want)
			// A bad value is one line, without the usage around it.
			if tt.name != "unknown subcommand" && len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
			}
		})
	}
}

// --client-rtt puts the legitimate clients that far away; none by
// default.
func TestBenchConfigClientRTT(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"--quick", "--client-rtt", "20ms"}, 20 * time.Millisecond},
		{[]string{"--client-rtt", "1s", "--probe-timeout", "5s", "--ipv6"}, time.Second},
	} {
		cfg, err := benchConfig(tt.args, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if cfg.ClientRTT != tt.want {
			t.Errorf("%q: client RTT %v, want %v", tt.args, cfg.ClientRTT, tt.want)
		}
	}
}

// A full run measures each rate in DefaultRounds rounds, --quick in one;
// --rounds says how many either way.
func TestBenchConfigRounds(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want int
	}{
		{nil, bench.DefaultRounds},
		{[]string{"--quick"}, 1},
		{[]string{"--rounds", "5"}, 5},
		{[]string{"--quick", "--rounds", "2"}, 2},
		{[]string{"--rounds=1", "--attack", "ack"}, 1},
	} {
		cfg, err := benchConfig(tt.args, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if cfg.Rounds != tt.want {
			t.Errorf("%q: %d rounds, want %d", tt.args, cfg.Rounds, tt.want)
		}
	}
}

// Every benchmark measures the clients of a server-first protocol after
// its floods, --quick ones too, unless --server-first=false.
func TestBenchConfigServerFirst(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--quick"}, true},
		{[]string{"--server-first=false"}, false},
		{[]string{"--quick", "--server-first=false", "--attack", "ack"}, false},
	} {
		cfg, err := benchConfig(tt.args, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if cfg.ServerFirst != tt.want {
			t.Errorf("%q: server-first %v, want %v", tt.args, cfg.ServerFirst, tt.want)
		}
	}
}

// --ipv6 runs the benchmark over IPv6; without it, IPv4 as always. It
// combines with every other flag.
func TestBenchConfigFamily(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bench.Family
	}{
		{nil, bench.IPv4},
		{[]string{"--ipv6"}, bench.IPv6},
		{[]string{"--ipv6=false"}, bench.IPv4},
		{[]string{"--quick", "--ipv6", "--systems", "synguard,synproxy", "--queues", "1,2", "--name", "sg6"}, bench.IPv6},
	} {
		cfg, err := benchConfig(tt.args, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if cfg.Family != tt.want {
			t.Errorf("%q: family %q, want %q", tt.args, cfg.Family, tt.want)
		}
	}
	cfg, err := benchConfig([]string{"--quick", "--ipv6", "--systems", "synguard,synproxy", "--queues", "1,2", "--name", "sg6"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "sg6" || len(cfg.Systems) != 2 || !slices.Equal(cfg.Queues, []int{1, 2}) || !slices.Equal(cfg.Rates, bench.QuickRates) {
		t.Errorf("with --ipv6 the other flags were lost: %+v", cfg)
	}
}

// --attack chooses the flood (syn by default), --systems takes
// synguard-nfqueue, and the default set has all four systems; --queues
// applies to either synguard system.
func TestBenchConfigAttackAndSystems(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		attack  bench.Kind
		systems []bench.System
	}{
		{nil, bench.KindSYN, nil},
		{[]string{"--attack", "syn"}, bench.KindSYN, nil},
		{[]string{"--attack", "ack", "--quick"}, bench.KindACK, nil},
		{[]string{"--attack=ack", "--systems", "synguard-nfqueue, synproxy", "--queues", "1,2"}, bench.KindACK,
			[]bench.System{bench.SynguardNFQueue, bench.Synproxy}},
		{[]string{"--systems", "none,synguard-nfqueue,synguard"}, bench.KindSYN,
			[]bench.System{bench.None, bench.SynguardNFQueue, bench.Synguard}},
	} {
		cfg, err := benchConfig(tt.args, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if cfg.Attack != tt.attack || !slices.Equal(cfg.Systems, tt.systems) {
			t.Errorf("%q: attack %q, systems %v; want %q, %v", tt.args, cfg.Attack, cfg.Systems, tt.attack, tt.systems)
		}
	}
	if got, want := systemNames(nil), []string{"synguard", "synguard-nfqueue", "synproxy", "none"}; !slices.Equal(got, want) {
		t.Errorf("default systems %v, want %v", got, want)
	}
}

func TestParseQueues(t *testing.T) {
	got, err := parseQueues(" 1, 2,4")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 4}; !slices.Equal(got, want) {
		t.Errorf("parseQueues = %v, want %v", got, want)
	}
	if s := queuesString(got); s != "1,2,4" {
		t.Errorf("queuesString = %q", s)
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

// `bench report` of a recording with synguard at one and two queues keeps
// them apart: a table row each per rate, "queues" in every run of the
// report.json it writes.
func TestBenchReportQueues(t *testing.T) {
	out := t.TempDir()
	_, stderr, code := runCLI("bench", "report", "--in", "../../bench/testdata/report-queues.json", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, rate := range []string{"20000/s", "100000/s", "max"} {
		for _, want := range []string{"| " + rate + " | synguard | 1 | nfqueue | ", "| " + rate + " | synguard | 2 | nfqueue | ", "| " + rate + " | synproxy | n/a | kernel | "} {
			if !strings.Contains(string(md), want) {
				t.Errorf("report.md has no row starting %q", want)
			}
		}
	}
	rep, err := bench.LoadReport(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	count := map[int]int{}
	for _, run := range rep.Runs {
		count[run.Queues]++
	}
	if count[1] != 3 || count[2] != 3 || count[0] != 6 {
		t.Errorf("runs by queue count %v, want 3 with 1, 3 with 2 and 6 kernel runs with 0", count)
	}
}

// `bench report` of a forged-ACK recording draws the ACK report: its
// plots (backend.png, not synack.png) and an ACK table with the path of
// every run.
func TestBenchReportACK(t *testing.T) {
	out := t.TempDir()
	_, stderr, code := runCLI("bench", "report", "--in", "../../bench/testdata/report-ack.json", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, f := range []string{"report.json", "report.md", "backend.png", "legit.png", "cpu.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "synack.png")); err == nil {
		t.Error("an ACK report drew synack.png")
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| forged ACK/s offered | reached backend/s |", "| CPU µs/ACK |",
		"| max | synguard | 1 | xdp | ", "| max | synguard-nfqueue | 1 | nfqueue | ", "| max | none | n/a | kernel | "} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
}
