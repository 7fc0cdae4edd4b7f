package bench

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/synguard/synguard/lab"
)

// Report is a benchmark's outcome: report.json holds it as it is, and
// report.md and the plots are drawn from it alone, so they can be made
// again from a recorded report.json (`synguard bench report`).
type Report struct {
	Date     time.Time `json:"date"`
	ElapsedS float64   `json:"elapsed_s"`
	// Family is the address family every run used: the lab, the service,
	// the flood and the gateway's rules (reports recorded before the
	// field existed are IPv4).
	Family    Family       `json:"family"`
	Machine   Machine      `json:"machine"`
	Config    ReportConfig `json:"config"`
	Runs      []RunResult  `json:"runs"`
	Baselines []Baseline   `json:"baselines"`
}

// Machine is what the benchmark ran on.
type Machine struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	GoVersion string `json:"go_version,omitempty"`
}

// ReportConfig is how the benchmark was run.
type ReportConfig struct {
	Rates         []int   `json:"rates"` // target SYN/s; 0 = the generator's maximum
	DurationS     float64 `json:"duration_s"`
	ProbeRate     int     `json:"probe_rate"`
	ProbeTimeoutS float64 `json:"probe_timeout_s"`
	// Queues are the NFQUEUE counts synguard was measured with, once
	// each at every rate (absent from reports recorded before them: one).
	Queues []int `json:"queues,omitempty"`
	// BackendOptions are the MSS and window scale learned from the
	// backend's SYN-ACK and given to SYNPROXY.
	BackendOptions BackendOptions `json:"backend_options"`
	// SynguardArgs are the arguments synguard ran with beyond the
	// benchmark's own (bench --synguard-args); none means its defaults.
	SynguardArgs []string `json:"synguard_args,omitempty"`
}

// RunResult is one system under one offered load.
type RunResult struct {
	System System `json:"system"`
	// Queues is the number of NFQUEUEs synguard ran with (`synguard run
	// --queues N`), which tells its runs at one rate apart; 0 for the
	// kernel systems, which have no queue. Reports recorded before the
	// field existed measured synguard with one, and LoadReport reads them
	// so.
	Queues     int     `json:"queues"`
	TargetPPS  int     `json:"target_pps"` // 0: as fast as the generator goes
	DurationS  float64 `json:"duration_s"`
	SYNsSent   int     `json:"syns_sent"`
	SendErrors int     `json:"send_errors"`
	// OfferedPPS is the rate the generator achieved.
	OfferedPPS float64 `json:"offered_pps"`
	// GatewayRxPPS is what the gateway's client-side interface received.
	GatewayRxPPS float64 `json:"gateway_rx_pps"`
	// SynackPPS is SYN-ACKs the gateway sent toward the spoofed sources.
	SynackPPS      float64 `json:"synack_pps"`
	LegitAttempts  int     `json:"legit_attempts"`
	LegitOK        int     `json:"legit_ok"`
	LegitSuccess   float64 `json:"legit_success"`
	HandshakeP50ms float64 `json:"handshake_p50_ms"`
	HandshakeP99ms float64 `json:"handshake_p99_ms"`
	TotalP50ms     float64 `json:"request_p50_ms"`
	TotalP99ms     float64 `json:"request_p99_ms"`
	// CPU seconds in this run's window and in its baseline's: the whole
	// machine's busy time from /proc/stat (CPUBusyS); what the measure
	// counts (BenchCPUS): the flood generator's thread (FloodCPUS, which
	// the veth hops and a kernel system's own work run in) plus the lab's
	// processes, synguard's among them, and the kernel threads; the
	// benchmark process as a whole, legitimate clients and backend
	// included (BenchProcessS: the same work in every run, left out of
	// the measure as noise); and the run time of every other user
	// process (OtherCPUS: someone else's work on a shared machine).
	// Reports recorded before FloodCPUS existed counted the whole
	// benchmark process in BenchCPUS.
	CPUBusyS       float64 `json:"cpu_busy_s"`
	BenchCPUS      float64 `json:"bench_cpu_s"`
	FloodCPUS      float64 `json:"flood_cpu_s,omitempty"`
	BenchProcessS  float64 `json:"bench_process_cpu_s,omitempty"`
	OtherCPUS      float64 `json:"other_cpu_s"`
	BaselineBusyS  float64 `json:"baseline_cpu_busy_s"`
	BaselineBenchS float64 `json:"baseline_bench_cpu_s"`
	BaselineFloodS float64 `json:"baseline_flood_cpu_s,omitempty"`
	BaselineOtherS float64 `json:"baseline_other_cpu_s"`
	// CPUusPerSYN is the benchmark's CPU time per offered SYN beyond the
	// baseline's (CPUPerSYN of BenchCPUS); MachineCPUusSYN is the same
	// from the whole machine's busy time, which counts other processes
	// too and is tick-sampled.
	CPUusPerSYN     float64 `json:"cpu_us_per_syn"`
	MachineCPUusSYN float64 `json:"machine_cpu_us_per_syn"`
	// WindowS is the measured window: the flood plus a short settle.
	WindowS float64 `json:"window_s"`
	// OtherLoad is the share of the machine's CPU capacity over the window
	// that processes outside the benchmark used; Attempts is how many
	// measurements it took to get one below 25% (at most
	// Config.MaxAttempts, keeping the least contended).
	OtherLoad float64 `json:"other_load"`
	Attempts  int     `json:"attempts"`
	// QueueDrops is synguard_queue_dropped_total over the run (0 for the
	// kernel systems, which have no queue).
	QueueDrops uint64 `json:"queue_drops"`
	// BacklogDrops is packets the kernel dropped machine-wide because a
	// CPU's input backlog (net.core.netdev_max_backlog) was full: where
	// veth links overflow, for every system alike.
	BacklogDrops uint64 `json:"backlog_drops"`
	// GatewayRSSMB is the synguard process's peak RSS (VmHWM) in MiB; 0
	// for the kernel systems, whose memory is the kernel's.
	GatewayRSSMB float64 `json:"gateway_rss_mb"`
	// EngineSYNs is synguard_syn_received_total over the run: the SYNs
	// that reached synguard's engine rather than being dropped on the way.
	EngineSYNs uint64 `json:"engine_syns,omitempty"`
	// QueueReceived is packets each of synguard's queues received over
	// the run (synguard_queue_received_total by queue number): how
	// --queue-balance spread the flood over them.
	QueueReceived []uint64 `json:"queue_received,omitempty"`
	// ProcessCPUusSYN is the synguard process's own run time per offered
	// SYN: user, system calls and the softirq work that ran in its
	// context (part of CPUusPerSYN).
	ProcessCPUusSYN float64        `json:"process_cpu_us_per_syn,omitempty"`
	ProbeErrors     map[string]int `json:"probe_errors,omitempty"`
}

// Baseline is the run at one offered load in which the gateway drops the
// flood in raw PREROUTING.
type Baseline struct {
	TargetPPS     int     `json:"target_pps"`
	DurationS     float64 `json:"duration_s"`
	SYNsSent      int     `json:"syns_sent"`
	OfferedPPS    float64 `json:"offered_pps"`
	GatewayRxPPS  float64 `json:"gateway_rx_pps"`
	SynackPPS     float64 `json:"synack_pps"`
	LegitSuccess  float64 `json:"legit_success"`
	BacklogDrops  uint64  `json:"backlog_drops"`
	WindowS       float64 `json:"window_s"`
	OtherLoad     float64 `json:"other_load"`
	Attempts      int     `json:"attempts"`
	CPUBusyS      float64 `json:"cpu_busy_s"`
	BenchCPUS     float64 `json:"bench_cpu_s"`
	FloodCPUS     float64 `json:"flood_cpu_s,omitempty"`
	BenchProcessS float64 `json:"bench_process_cpu_s,omitempty"`
	OtherCPUS     float64 `json:"other_cpu_s"`
	// CPUusPerSYN is the baseline's whole cost per SYN in the
	// benchmark's own tasks: generating it, delivering it to the gateway
	// and dropping it.
	CPUusPerSYN float64 `json:"cpu_us_per_syn"`
}

// Files a report is written to, inside the output directory.
const (
	ReportJSON = "report.json"
	ReportMD   = "report.md"
)

// LoadReport reads a report.json.
func LoadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load report: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("load report %s: %w", path, err)
	}
	if r.Family == "" {
		// Recorded before "family": IPv4, the only family there was.
		r.Family = IPv4
	}
	if _, err := ParseFamily(string(r.Family)); err != nil {
		return nil, fmt.Errorf("load report %s: %w", path, err)
	}
	for i := range r.Runs {
		run := &r.Runs[i]
		if _, err := ParseSystem(string(run.System)); err != nil {
			return nil, fmt.Errorf("load report %s: run %d: %w", path, i, err)
		}
		switch {
		case run.Queues < 0 || run.Queues > MaxQueues:
			return nil, fmt.Errorf("load report %s: run %d: %d queues outside 0..%d", path, i, run.Queues, MaxQueues)
		case run.System == Synguard && run.Queues == 0:
			// Recorded before "queues": synguard ran with one.
			run.Queues = 1
		case run.System != Synguard && run.Queues != 0:
			return nil, fmt.Errorf("load report %s: run %d: %s has no queues, but %d are recorded", path, i, run.System, run.Queues)
		}
	}
	return &r, nil
}

// Write writes report.json, report.md and the plots into dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ReportJSON), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	var md bytes.Buffer
	if err := r.WriteMarkdown(&md); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ReportMD), md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return r.WritePlots(dir)
}

// sortedRuns returns the runs ordered by target rate (the generator's
// maximum last), then by system, synguard's by queue count.
func (r *Report) sortedRuns() []RunResult {
	runs := slices.Clone(r.Runs)
	slices.SortStableFunc(runs, func(a, b RunResult) int {
		return cmp.Or(cmp.Compare(rateKey(a.TargetPPS), rateKey(b.TargetPPS)), compareVariants(a.variant(), b.variant()))
	})
	return runs
}

func compareVariants(a, b variant) int {
	return cmp.Or(cmp.Compare(systemIndex(a.sys), systemIndex(b.sys)), cmp.Compare(a.queues, b.queues))
}

// variant is the run's system and queue count; a synguard run without a
// count ran with one.
func (run RunResult) variant() variant {
	v := variant{sys: run.System, queues: run.Queues}
	if v.sys == Synguard && v.queues == 0 {
		v.queues = 1
	}
	return v
}

func rateKey(target int) int {
	if target == 0 {
		return MaxFloodRate + 1
	}
	return target
}

func systemIndex(s System) int {
	if i := slices.Index(AllSystems, s); i >= 0 {
		return i
	}
	return len(AllSystems)
}

// variants lists the systems present, synguard once per queue count, in
// report order.
func (r *Report) variants() []variant {
	var out []variant
	for _, run := range r.Runs {
		if !slices.Contains(out, run.variant()) {
			out = append(out, run.variant())
		}
	}
	slices.SortFunc(out, compareVariants)
	return out
}

// showQueues says whether the report names synguard's queue counts: when
// it measured more than one, or a single count other than one. A report
// of the default one-queue synguard reads as before.
func (r *Report) showQueues() bool {
	return slices.ContainsFunc(r.Runs, func(run RunResult) bool { return run.variant().queues > 1 })
}

// label names a variant for people, in the reading and the plots' legends:
// "synguard ×2 queues" when the report tells synguard's queue counts
// apart, the system alone otherwise.
func (r *Report) label(v variant) string {
	if v.sys != Synguard || !r.showQueues() {
		return string(v.sys)
	}
	if v.queues == 1 {
		return "synguard ×1 queue"
	}
	return fmt.Sprintf("synguard ×%d queues", v.queues)
}

// answered is the share of offered SYNs that got a SYN-ACK.
func (run RunResult) answered() float64 {
	if run.OfferedPPS <= 0 {
		return 0
	}
	return run.SynackPPS / run.OfferedPPS
}

// TableMarkdown writes the results table alone, as the README carries it.
func (r *Report) TableMarkdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| target | system | queues | offered SYN/s | SYN-ACK/s | answered | legit ok | handshake p50 / p99 | request p50 / p99 | CPU µs/SYN | queue drops | peak RSS | other load |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, run := range r.sortedRuns() {
		// The kernel systems have no queue and no process of their own.
		queues, drops, rss := "n/a", "n/a", "n/a"
		if run.System == Synguard {
			queues = fmt.Sprint(run.variant().queues)
			drops = fmtCount(float64(run.QueueDrops))
			rss = fmt.Sprintf("%.1f MiB", run.GatewayRSSMB)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.1f%% | %.1f%% (%d/%d) | %s / %s ms | %s / %s ms | %.2f | %s | %s | %.0f%% |\n",
			rateName(run.TargetPPS), run.System, queues, fmtCount(run.OfferedPPS), fmtCount(run.SynackPPS),
			100*run.answered(), 100*run.LegitSuccess, run.LegitOK, run.LegitAttempts,
			fmtMS(run.HandshakeP50ms), fmtMS(run.HandshakeP99ms), fmtMS(run.TotalP50ms), fmtMS(run.TotalP99ms),
			run.CPUusPerSYN, drops, rss, 100*run.OtherLoad)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMarkdown writes report.md: what was run, the results table, a
// reading of it, the baselines, the method and the plots.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# synguard bench: SYN flood, side by side\n\n")
	fam := cmp.Or(r.Family, IPv4)
	fmt.Fprintf(&b, "Address family: **%s** (service %s, flood from %s).\n\n",
		fam, familyReport(fam).service, familyReport(fam).spoof)
	fmt.Fprintf(&b, "Measured %s on %s. Each flood lasted %s s, while %d legitimate clients per second connected, "+
		"each given %s s; SYNPROXY was given the backend's MSS %d and window scale %d. The whole run took %.0f s.\n\n",
		r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Machine.describe(), fmtFloat(r.Config.DurationS),
		r.Config.ProbeRate, fmtFloat(r.Config.ProbeTimeoutS), r.Config.BackendOptions.MSS, r.Config.BackendOptions.WindowScale, r.ElapsedS)
	if len(r.Config.SynguardArgs) > 0 {
		fmt.Fprintf(&b, "synguard ran with `%s` beyond the benchmark's own arguments.\n\n", strings.Join(r.Config.SynguardArgs, " "))
	}
	b.WriteString("## Results\n\n")
	if err := r.TableMarkdown(&b); err != nil {
		return err
	}
	b.WriteString("\n![SYN-ACKs answered against offered load](synack.png)\n")
	b.WriteString("![Legitimate clients served against offered load](legit.png)\n")
	b.WriteString("![CPU per SYN against offered load](cpu.png)\n\n")

	b.WriteString("## Reading\n\n")
	for _, line := range r.reading() {
		fmt.Fprintf(&b, "- %s\n", line)
	}

	b.WriteString("\n## Baselines\n\n")
	fmt.Fprintf(&b, "The gateway drops the flood in raw PREROUTING (`%s -t raw -A PREROUTING -s %s -d BACKEND -p tcp --syn -j DROP`).\n\n",
		familyNet(fam).iptables, familyReport(fam).spoof)
	b.WriteString("| target | offered SYN/s | gateway received/s | SYN-ACK/s | benchmark CPU | CPU µs/SYN, all in | backlog drops | legit ok | other load |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	bases := slices.Clone(r.Baselines)
	slices.SortStableFunc(bases, func(a, b Baseline) int { return cmp.Compare(rateKey(a.TargetPPS), rateKey(b.TargetPPS)) })
	for _, base := range bases {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.2f s | %.2f | %s | %.1f%% | %.0f%% |\n",
			rateName(base.TargetPPS), fmtCount(base.OfferedPPS), fmtCount(base.GatewayRxPPS),
			fmtCount(base.SynackPPS), base.BenchCPUS, base.CPUusPerSYN,
			fmtCount(float64(base.BacklogDrops)), 100*base.LegitSuccess, 100*base.OtherLoad)
	}

	b.WriteString("\n## Method\n\n")
	b.WriteString(familyReport(fam).method.Replace(methodText))
	_, err := w.Write(b.Bytes())
	return err
}

// familyText is what report.md says differently for each family.
type familyText struct {
	service, spoof string
	// method fills in methodText's placeholders.
	method *strings.Replacer
}

func familyReport(f Family) familyText {
	t := familyText{service: "203.0.113.2:80", spoof: lab.SpoofPrefix4.String()}
	labText := "IPv4 only"
	if f == IPv6 {
		t = familyText{service: "[2001:db8:b::2]:80", spoof: lab.SpoofPrefix6.String()}
		labText = "with IPv6: the service, the flood, the legitimate clients (from 2001:db8:c::2) and " +
			"the gateway's rules (ip6tables) are all IPv6"
	}
	t.method = strings.NewReplacer("{service}", t.service, "{spoof}", t.spoof, "{lab}", labText)
	return t
}

// methodText is report.md's method; familyReport fills in {service},
// {spoof} and {lab}.
const methodText = `- **Lab.** Three network namespaces on one machine: client, gateway, backend,
  joined by veth pairs (` + "`lab.Up`" + `, {lab}). The backend is an in-process Go HTTP
  server on {service}, restarted before every run so that no half-open
  requests carry over.
- **Systems.** *synguard*: ` + "`synguard run --protect {service} --mode always --queues N`" + ` in the
  gateway namespace, a fresh process per run, measured once per queue count asked for (one
  by default; the table's queues column). With several queues netfilter spreads the SYNs
  over them by a hash of each flow's addresses and ports (` + "`--queue-balance`" + `), one worker each;
  every worker shares the machine's cores with the generator. *synproxy*: the kernel's
  SYNPROXY target as the iptables-extensions manual prescribes, in FORWARD:
  ` + "`nf_conntrack_tcp_loose=0`" + `; ` + "`raw PREROUTING --syn -j CT --notrack`" + `;
  ` + "`FORWARD -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY --sack-perm --timestamp --wscale W --mss M`" + `
  with the backend's own values; ` + "`FORWARD -m conntrack --ctstate INVALID -j DROP`" + `.
  *none*: plain forwarding; the backend answers with the kernel's SYN cookies
  (` + "`net.ipv4.tcp_syncookies=1`" + `).
- **Offered load** is the rate the generator achieved (SYNs sent / flood time), from
  random sources in {spoof} with random ports and ISNs, from the client namespace.
  "max" is as fast as it goes; it then competes for the CPUs with what it floods.
- **SYN-ACK/s** counts SYN-ACKs leaving the gateway toward {spoof}, with a
  match-only rule at the end of mangle POSTROUTING on the client-side interface: every
  system's SYN-ACKs pass there (synguard's raw socket and SYNPROXY via the local output
  path, the backend's forwarded), and a rule counter costs the same in every run.
- **Legit ok, handshake, request.** Legitimate clients start at a fixed rate during the
  flood from the client's real address; each connects, sends ` + "`GET /bytes/1024`" + ` and checks
  the body, within the probe timeout. Handshake is connect() until established; request
  is connect() until the body was checked. Latencies are nearest-rank percentiles over
  the clients that succeeded.
- **CPU µs/SYN.** All namespaces share the same kernel and cores, and veth delivery runs
  in the sender's softirq, so no one process's CPU time isolates a system's cost. So
  each system's run is paired with a baseline at the same target rate in which the
  gateway drops the flood in raw PREROUTING, and CPU µs/SYN = CPU/SYNs − baseline
  CPU/baseline SYNs, which is (CPU − baseline CPU) / SYNs offered when both sent as many:
  generating the flood and carrying it to the gateway cancel out. The CPU time is the
  run time, over the flood plus a short settle, of every task that does the
  benchmark's work: the benchmark process (generator, legitimate clients, backend), the
  processes in the lab's namespaces (synguard) and the kernel threads (ksoftirqd,
  kworkers), from /proc/PID/stat; softirq work is charged to the task it ran in, which
  for veth is the sender. This leaves out other people's processes on a shared
  machine. The whole machine's busy time from /proc/stat (user + nice + system + irq +
  softirq + steal) gives the same figure in report.json as machine_cpu_us_per_syn;
  it counts every other process too and is sampled at the timer tick, so on a busy
  or bursty machine it is much noisier. Either is noisy at low rates.
- **Queue drops** is ` + "`synguard_queue_dropped_total`" + ` over the run, summed over synguard's
  queues: SYNs the kernel dropped because a queue or its socket was full (fail closed).
  The kernel systems have no queue.
- **Backlog drops** (report.json and the baselines table) is packets the kernel dropped,
  machine-wide, because a CPU's input backlog (net.core.netdev_max_backlog) was full
  (/proc/net/softnet_stat): where veth links overflow at high rates, whatever the system.
  A dropped handshake packet is one a legitimate client then waits for.
- **Other load** is the share of the machine's CPU capacity that processes outside the
  benchmark used during the run (the machine may be shared). They compete for the cores,
  starving the generator or the system under test, so a run above 25% is measured again,
  up to three times in all (twice with --quick), and the least contended attempt is kept.
- **Peak RSS** is the synguard process's VmHWM; the kernel systems' memory is the
  kernel's and is not reported.
`

// reading is a few plain sentences about the results, drawn from the
// numbers alone.
func (r *Report) reading() []string {
	var lines []string
	for _, v := range r.variants() {
		var runs []RunResult
		for _, run := range r.sortedRuns() {
			if run.variant() == v {
				runs = append(runs, run)
			}
		}
		lines = append(lines, readSystem(r.label(v), v.sys, runs))
	}
	if line := r.readQueues(); line != "" {
		lines = append(lines, line)
	}
	var contended []string
	for _, run := range r.sortedRuns() {
		if run.OtherLoad > contendedShare {
			contended = append(contended, fmt.Sprintf("%s at %s (%.0f%%)", r.label(run.variant()), rateName(run.TargetPPS), 100*run.OtherLoad))
		}
	}
	for _, base := range r.Baselines {
		if base.OtherLoad > contendedShare {
			contended = append(contended, fmt.Sprintf("the baseline at %s (%.0f%%)", rateName(base.TargetPPS), 100*base.OtherLoad))
		}
	}
	if len(contended) > 0 {
		lines = append(lines, "Other processes on the machine took more than a quarter of it, even after measuring again, during: "+
			strings.Join(contended, ", ")+". Those rows are less trustworthy: the generator and the system under test had fewer cycles.")
	}
	if top := r.atHighestLoad(); len(top) > 1 {
		var parts []string
		for _, run := range top {
			parts = append(parts, fmt.Sprintf("%s %s SYN-ACK/s of %s offered (legit %.0f%%)",
				r.label(run.variant()), fmtCount(run.SynackPPS), fmtCount(run.OfferedPPS), 100*run.LegitSuccess))
		}
		line := "At the highest load: " + strings.Join(parts, "; ") + "."
		if top[0].TargetPPS == 0 {
			line += " The generator then runs as fast as it can on cores it shares with the system under test, so each system was offered what was left over."
		}
		lines = append(lines, line)
	}
	return lines
}

// readQueues compares synguard's queue counts at the highest load, where
// one queue is most likely to be the bottleneck: what each answered
// against the fewest queues, what its queues dropped and how evenly
// --queue-balance spread the flood. Empty unless the report has more than
// one count.
func (r *Report) readQueues() string {
	var runs []RunResult
	for _, run := range r.atHighestLoad() {
		if run.System == Synguard {
			runs = append(runs, run)
		}
	}
	if len(runs) < 2 {
		return ""
	}
	first, q1 := runs[0], runs[0].variant().queues
	var s strings.Builder
	fmt.Fprintf(&s, "**Queues** (synguard at %s): with %d %s it answered %s SYN-ACK/s of %s offered (%.0f%%; %s queue drops)",
		rateName(first.TargetPPS), q1, plural(q1, "queue", "queues"), fmtCount(first.SynackPPS),
		fmtCount(first.OfferedPPS), 100*first.answered(), fmtCount(float64(first.QueueDrops)))
	for _, run := range runs[1:] {
		fmt.Fprintf(&s, "; with %d, %s of %s (%.0f%%; %s queue drops)",
			run.variant().queues, fmtCount(run.SynackPPS), fmtCount(run.OfferedPPS), 100*run.answered(), fmtCount(float64(run.QueueDrops)))
		if first.SynackPPS > 0 {
			fmt.Fprintf(&s, ", %.2f× the SYN-ACKs of %d", run.SynackPPS/first.SynackPPS, q1)
		}
		if share, ok := busiestQueueShare(run.QueueReceived); ok {
			fmt.Fprintf(&s, ", its busiest queue receiving %.0f%% of the packets", 100*share)
		}
	}
	s.WriteString(".")
	if most := runs[len(runs)-1].variant().queues; r.Machine.CPUs > 0 && most >= r.Machine.CPUs {
		fmt.Fprintf(&s, " This machine has %d CPUs, and the generator, the legitimate clients and the backend share them with synguard's %d workers, so more queues add workers but not cores.",
			r.Machine.CPUs, most)
	}
	return s.String()
}

// busiestQueueShare is the busiest queue's share of the packets the
// queues received; ok is false without at least two queues that received
// something.
func busiestQueueShare(received []uint64) (share float64, ok bool) {
	var total, top uint64
	for _, n := range received {
		total += n
		top = max(top, n)
	}
	if len(received) < 2 || total == 0 {
		return 0, false
	}
	return float64(top) / float64(total), true
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func readSystem(label string, sys System, runs []RunResult) string {
	var (
		kept      float64 // highest offered load answered ≥ 95%
		firstFail *RunResult
		minLegit  = runs[0]
		cpus      []float64
		drops     uint64
		firstDrop *RunResult
	)
	for i := range runs {
		run := runs[i]
		if run.answered() >= 0.95 {
			kept = max(kept, run.OfferedPPS)
		} else if firstFail == nil {
			firstFail = &runs[i]
		}
		if run.LegitSuccess < minLegit.LegitSuccess {
			minLegit = run
		}
		// Below about 10k SYN/s the figure is mostly noise.
		if run.OfferedPPS >= 10_000 {
			cpus = append(cpus, run.CPUusPerSYN)
		}
		drops += run.QueueDrops
		if run.QueueDrops > 0 && firstDrop == nil {
			firstDrop = &runs[i]
		}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "**%s**: ", label)
	switch {
	case firstFail == nil:
		fmt.Fprintf(&s, "answered at least 95%% of the SYNs at every load, up to %s SYN/s", fmtCount(kept))
	case kept > 0:
		fmt.Fprintf(&s, "answered at least 95%% of the SYNs up to %s SYN/s offered; at %s SYN/s it answered %.0f%%",
			fmtCount(kept), fmtCount(firstFail.OfferedPPS), 100*firstFail.answered())
	default:
		fmt.Fprintf(&s, "answered less than 95%% of the SYNs at every load (%.0f%% at %s SYN/s)",
			100*firstFail.answered(), fmtCount(firstFail.OfferedPPS))
	}
	fmt.Fprintf(&s, ". Legitimate clients: at worst %.0f%% succeeded (at %s SYN/s offered, handshake p99 %s ms",
		100*minLegit.LegitSuccess, fmtCount(minLegit.OfferedPPS), fmtMS(minLegit.HandshakeP99ms))
	if len(minLegit.ProbeErrors) > 0 {
		kinds := slices.Sorted(maps.Keys(minLegit.ProbeErrors))
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%d × %s", minLegit.ProbeErrors[k], k)
		}
		fmt.Fprintf(&s, "; failures: %s", strings.Join(parts, ", "))
	}
	s.WriteString(")")
	if len(cpus) > 0 {
		slices.Sort(cpus)
		fmt.Fprintf(&s, ". CPU per SYN %.1f–%.1f µs at 10k SYN/s and above", cpus[0], cpus[len(cpus)-1])
	}
	if over := slices.IndexFunc(runs, func(r RunResult) bool { return r.answered() > 1.05 }); over >= 0 {
		fmt.Fprintf(&s, ". More SYN-ACKs than SYNs (%.0f%% at %s SYN/s): the backend retransmits the SYN-ACK of every half-open connection in its SYN queue until the queue overflows into cookies",
			100*runs[over].answered(), fmtCount(runs[over].OfferedPPS))
	}
	if sys == Synguard {
		if firstDrop != nil {
			fmt.Fprintf(&s, ". Its queue dropped SYNs from %s SYN/s offered on (%s in all): the kernel answers nothing for those, and a dropped legitimate SYN is retried by the client after 1 s",
				fmtCount(firstDrop.OfferedPPS), fmtCount(float64(drops)))
		} else {
			s.WriteString(". Its queue dropped nothing")
		}
	}
	s.WriteString(".")
	return s.String()
}

// atHighestLoad returns each system's run at the highest target rate.
func (r *Report) atHighestLoad() []RunResult {
	runs := r.sortedRuns()
	if len(runs) == 0 {
		return nil
	}
	top := runs[len(runs)-1].TargetPPS
	var out []RunResult
	for _, run := range runs {
		if run.TargetPPS == top {
			out = append(out, run)
		}
	}
	return out
}

func (m Machine) describe() string {
	s := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		s += " (" + m.CPUModel + ")"
	}
	s += ", Linux " + m.Kernel
	if m.GoVersion != "" {
		s += ", " + m.GoVersion
	}
	return s
}

// fmtCount prints a rate or count with thousands separators.
func fmtCount(v float64) string {
	n := int64(v + 0.5)
	if n < 0 {
		return "-" + fmtCount(-v)
	}
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtMS(v float64) string {
	switch {
	case v == 0:
		return "–"
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func fmtFloat(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}
