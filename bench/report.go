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
	Family Family `json:"family"`
	// Attack is what every run's flood sent: "syn" or "ack" (forged
	// ACKs). It decides which keys the runs and baselines carry: an ack
	// report has acks_sent, backend_ack_pps, rst_pps and cpu_us_per_ack
	// where a syn report has syns_sent, synack_pps and cpu_us_per_syn
	// (reports recorded before the field existed are syn).
	Attack    Kind         `json:"attack"`
	Machine   Machine      `json:"machine"`
	Config    ReportConfig `json:"config"`
	Runs      []RunResult  `json:"runs"`
	Baselines []Baseline   `json:"baselines"`
	// NoFlood is each system's legitimate clients without a flood,
	// measured when the clients were a round trip away (bench
	// --client-rtt).
	NoFlood []NoFloodRun `json:"no_flood,omitempty"`
	// NoFloodBaseline is the baseline's run without a flood, when the
	// systems had theirs.
	NoFloodBaseline *NoFloodBaseline `json:"no_flood_baseline,omitempty"`
	// ServerFirst is each system's clients of a protocol whose server
	// speaks first, without a flood (bench --server-first).
	ServerFirst []ServerFirstRun `json:"server_first,omitempty"`
}

// NoFloodBaseline is the baseline's run without a flood: the CPU time of
// the tasks the measure counts (kernel threads and the lab's processes)
// over its window.
type NoFloodBaseline struct {
	BenchCPUS float64 `json:"bench_cpu_s"`
	WindowS   float64 `json:"window_s"`
}

// Machine is what the benchmark ran on.
type Machine struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	GoVersion string `json:"go_version,omitempty"`
	// BPFStats says the kernel timed every BPF program run
	// (kernel.bpf_stats_enabled) when the benchmark began: two more
	// clock reads a packet for synguard's fast path, none for the
	// kernel systems.
	BPFStats bool `json:"bpf_stats_enabled,omitempty"`
}

// ReportConfig is how the benchmark was run.
type ReportConfig struct {
	Rates         []int   `json:"rates"` // target packets (SYNs or forged ACKs) per second; 0 = the generator's maximum
	DurationS     float64 `json:"duration_s"`
	ProbeRate     int     `json:"probe_rate"`
	ProbeTimeoutS float64 `json:"probe_timeout_s"`
	// Queues are the NFQUEUE counts synguard and synguard-nfqueue were
	// measured with, once each at every rate (absent from reports
	// recorded before them: one).
	Queues []int `json:"queues,omitempty"`
	// BackendOptions are the MSS and window scale learned from the
	// backend's SYN-ACK and given to SYNPROXY.
	BackendOptions BackendOptions `json:"backend_options"`
	// SynguardArgs are the arguments synguard ran with beyond the
	// benchmark's own (bench --synguard-args); none means its defaults.
	SynguardArgs []string `json:"synguard_args,omitempty"`
	// ClientRTTms is the round trip the legitimate clients were put
	// behind (bench --client-rtt), MeasuredRTTms the median ICMP echo
	// from them to the backend: that and the lab's own. Both are absent
	// when the clients were next to the gateway.
	ClientRTTms   float64 `json:"client_rtt_ms,omitempty"`
	MeasuredRTTms float64 `json:"measured_rtt_ms,omitempty"`
	// Rounds is how many times each rate was measured, the systems in
	// turn, and pooled (bench --rounds); absent for one.
	Rounds int `json:"rounds,omitempty"`
}

// RunResult is one system under one offered load.
//
// The flood's own figures come in a pair of key sets, by the report's
// attack: a SYN flood's run has SYNsSent, SynackPPS, CPUusPerSYN,
// MachineCPUusSYN, ProcessCPUusSYN and EngineSYNs; a forged-ACK flood's
// has ACKsSent, BackendACKPPS, RSTPPS, CPUusPerACK, MachineCPUusACK and
// ProcessCPUusACK. report.json carries only the attack's set
// (Report.MarshalJSON).
type RunResult struct {
	System System `json:"system"`
	// Queues is the number of NFQUEUEs synguard ran with (`synguard run
	// --queues N`), which tells its runs at one rate apart; 0 for the
	// kernel systems, which have no queue. Reports recorded before the
	// field existed measured synguard with one, and LoadReport reads them
	// so.
	Queues int `json:"queues"`
	// Path is how the flood was handled: "xdp" when synguard's XDP
	// program answered the SYNs (it sent SYN-ACKs: XDPTX > 0) or dropped
	// the forged ACKs (XDPDrop > 0), "tc" when its tc program did (the
	// same code at tc ingress, which --xdp auto takes on veth), "nfqueue"
	// for a synguard run without either, "kernel" for synproxy and none.
	// Reports recorded before the field existed are read as nfqueue for
	// synguard, which had no fast path then.
	Path       string  `json:"path"`
	TargetPPS  int     `json:"target_pps"` // 0: as fast as the generator goes
	DurationS  float64 `json:"duration_s"`
	SYNsSent   int     `json:"syns_sent"`
	ACKsSent   int     `json:"acks_sent"`
	SendErrors int     `json:"send_errors"`
	// OfferedPPS is the rate the generator achieved.
	OfferedPPS float64 `json:"offered_pps"`
	// GatewayRxPPS is what the gateway's client-side interface received.
	GatewayRxPPS float64 `json:"gateway_rx_pps"`
	// SynackPPS is SYN-ACKs toward the spoofed sources that reached the
	// client namespace.
	SynackPPS float64 `json:"synack_pps"`
	// BackendACKPPS is forged ACKs that reached the backend, per second
	// of flood; RSTPPS is RSTs toward the spoofed sources that reached
	// the client namespace (what the flood reflected).
	BackendACKPPS  float64 `json:"backend_ack_pps"`
	RSTPPS         float64 `json:"rst_pps"`
	LegitAttempts  int     `json:"legit_attempts"`
	LegitOK        int     `json:"legit_ok"`
	LegitSuccess   float64 `json:"legit_success"`
	HandshakeP50ms float64 `json:"handshake_p50_ms"`
	HandshakeP99ms float64 `json:"handshake_p99_ms"`
	// TTFBP50ms, P90 and P99 are the legitimate clients' time to first
	// byte: connect() until the response's first byte (absent from
	// reports recorded before it was measured).
	TTFBP50ms  float64 `json:"ttfb_p50_ms,omitempty"`
	TTFBP90ms  float64 `json:"ttfb_p90_ms,omitempty"`
	TTFBP99ms  float64 `json:"ttfb_p99_ms,omitempty"`
	TotalP50ms float64 `json:"request_p50_ms"`
	TotalP99ms float64 `json:"request_p99_ms"`
	// LegitSYNRetrans is the legitimate clients whose SYN was
	// retransmitted (nil in reports recorded before it was measured).
	LegitSYNRetrans *SYNRetrans `json:"legit_syn_retrans,omitempty"`
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
	// CPUusPerACK and MachineCPUusACK are the same per offered forged
	// ACK.
	CPUusPerACK     float64 `json:"cpu_us_per_ack"`
	MachineCPUusACK float64 `json:"machine_cpu_us_per_ack"`
	// ClientsCPUusACK is, per forged ACK, what the system (beyond the
	// baseline) spent over as long a run without the flood, on the same
	// legitimate clients and its own upkeep: left out of CPUusPerACK,
	// whose sum with it is the figure reports recorded before it have
	// (see quietCost). Absent from them.
	ClientsCPUusACK float64 `json:"clients_cpu_us_per_ack,omitempty"`
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
	// QueueReceived is packets each of synguard's queues of the flood's
	// kind received over the run (synguard_queue_received_total by queue
	// number): its SYN queues in a SYN flood, its completion queues in an
	// ACK flood. How --queue-balance spread the flood over them.
	QueueReceived []uint64 `json:"queue_received,omitempty"`
	// ProcessCPUusSYN is the synguard process's own run time per offered
	// SYN: user, system calls and the softirq work that ran in its
	// context (part of CPUusPerSYN); ProcessCPUusACK per forged ACK.
	ProcessCPUusSYN float64 `json:"process_cpu_us_per_syn,omitempty"`
	ProcessCPUusACK float64 `json:"process_cpu_us_per_ack,omitempty"`
	// CookieInvalid is synguard_cookie_invalid_total over the run: ACKs
	// synguard dropped for carrying no valid cookie, in its engine and
	// its XDP program.
	CookieInvalid uint64 `json:"cookie_invalid,omitempty"`
	// XDPTX, XDPDrop and XDPPass are synguard_xdp_packets_total over the
	// run, by action: SYN-ACKs the XDP program sent, packets it dropped
	// and packets it left to the kernel (all 0 without the program).
	XDPTX       uint64         `json:"xdp_tx,omitempty"`
	XDPDrop     uint64         `json:"xdp_drop,omitempty"`
	XDPPass     uint64         `json:"xdp_pass,omitempty"`
	ProbeErrors map[string]int `json:"probe_errors,omitempty"`
	// Rounds are the run's figures round by round, against that round's
	// baseline, when it was measured in several (Config.Rounds); the
	// fields above pool them.
	Rounds []Round `json:"rounds,omitempty"`
}

// Round is one round's figures of a run measured in several: its CPU per
// flood packet (µs per SYN or per forged ACK, as the report's attack) and
// its legitimate clients' request p50 and handshake p99.
type Round struct {
	CPUus          float64 `json:"cpu_us"`
	TotalP50ms     float64 `json:"request_p50_ms"`
	HandshakeP99ms float64 `json:"handshake_p99_ms"`
}

// roundRow is a round's figures from its run as runRow makes it.
func roundRow(run RunResult, attack Kind) Round {
	return Round{CPUus: run.cpuPerPacket(attack), TotalP50ms: run.TotalP50ms, HandshakeP99ms: run.HandshakeP99ms}
}

// NoFloodRun is one system's legitimate clients without a flood: the same
// clients at the same rate for as long as a flood run, through the same
// set-up, with nothing else on the links.
type NoFloodRun struct {
	System System `json:"system"`
	Queues int    `json:"queues"`
	// Path is how the legitimate clients' SYNs were answered: by
	// synguard's fast path (xdp or tc) or its queue (nfqueue); kernel for
	// synproxy and none.
	Path           string  `json:"path"`
	LegitAttempts  int     `json:"legit_attempts"`
	LegitOK        int     `json:"legit_ok"`
	LegitSuccess   float64 `json:"legit_success"`
	HandshakeP50ms float64 `json:"handshake_p50_ms"`
	HandshakeP99ms float64 `json:"handshake_p99_ms"`
	TTFBP50ms      float64 `json:"ttfb_p50_ms"`
	TTFBP90ms      float64 `json:"ttfb_p90_ms"`
	TTFBP99ms      float64 `json:"ttfb_p99_ms"`
	TotalP50ms     float64 `json:"request_p50_ms"`
	TotalP99ms     float64 `json:"request_p99_ms"`
	// LegitSYNRetrans is as in RunResult.
	LegitSYNRetrans *SYNRetrans    `json:"legit_syn_retrans,omitempty"`
	OtherLoad       float64        `json:"other_load"`
	Attempts        int            `json:"attempts"`
	ProbeErrors     map[string]int `json:"probe_errors,omitempty"`
	// BenchCPUS is the CPU time the measure counts over the run's window
	// (WindowS), as a flood run's bench_cpu_s; ProcessCPUS synguard's
	// process's part of it. Absent from reports recorded before them.
	BenchCPUS   float64 `json:"bench_cpu_s,omitempty"`
	ProcessCPUS float64 `json:"process_cpu_s,omitempty"`
	WindowS     float64 `json:"window_s,omitempty"`
}

// ServerFirstRun is one system's clients of a protocol whose server
// speaks first (SMTP, SSH, FTP), without a flood: each connects, sends
// nothing and waits for the backend's greeting (lab.ProbeGreeting), which
// the backend writes once it has taken the gateway's ACK of its SYN-ACK.
type ServerFirstRun struct {
	System System `json:"system"`
	Queues int    `json:"queues"`
	// Path is as in NoFloodRun.
	Path           string  `json:"path"`
	LegitAttempts  int     `json:"legit_attempts"`
	LegitOK        int     `json:"legit_ok"`
	LegitSuccess   float64 `json:"legit_success"`
	HandshakeP50ms float64 `json:"handshake_p50_ms"`
	// Greeting* are connect() until the greeting's first byte.
	GreetingP50ms float64 `json:"greeting_p50_ms"`
	GreetingP90ms float64 `json:"greeting_p90_ms"`
	GreetingP99ms float64 `json:"greeting_p99_ms"`
	// BackendACKsRejected is the ACKs the backend dropped in its
	// handshakes for echoing a timestamp it never sent (the backend's
	// TcpExt TSEcrRejected over the run); BackendSYNACKsResent the
	// SYN-ACKs it sent again (TCPSynRetrans), a second after the first
	// when no usable ACK came.
	BackendACKsRejected  uint64         `json:"backend_acks_rejected"`
	BackendSYNACKsResent uint64         `json:"backend_synacks_resent"`
	ProbeErrors          map[string]int `json:"probe_errors,omitempty"`
	OtherLoad            float64        `json:"other_load"`
	Attempts             int            `json:"attempts"`
}

func (n ServerFirstRun) variant() variant { return variant{sys: n.System, queues: n.Queues} }

// SYNRetrans is how many legitimate clients' kernels had to send their
// SYN again in a run: each one's SYN, or the SYN-ACK answering it, was
// dropped on the way, and the client waited at least its 1 s
// retransmission timeout (lab.ProbeResult.SYNRetransmits).
type SYNRetrans struct {
	// Clients counts the clients, failed ones included, whose SYN was
	// retransmitted; Share is Clients over the clients attempted.
	Clients int     `json:"clients"`
	Share   float64 `json:"share"`
	// SYNs counts the retransmitted SYNs.
	SYNs int `json:"syns"`
}

// synRetrans is a run's SYNRetrans from its probes.
func synRetrans(p ProbeSummary) *SYNRetrans {
	return &SYNRetrans{Clients: p.SYNRetransmitted, Share: p.SYNRetransmittedShare, SYNs: p.SYNRetransmits}
}

// cell is a table's cell: the clients and their share, or a dash where
// the report did not measure them.
func (r *SYNRetrans) cell() string {
	if r == nil {
		return "–"
	}
	return fmt.Sprintf("%d (%.1f%%)", r.Clients, 100*r.Share)
}

// variant is the row's system and queue count.
func (n NoFloodRun) variant() variant { return variant{sys: n.System, queues: n.Queues} }

// Baseline is the run at one offered load in which the gateway drops the
// flood in raw PREROUTING. Like a run's, its flood figures are SYNsSent,
// SynackPPS and CPUusPerSYN in a SYN flood, ACKsSent, BackendACKPPS,
// RSTPPS and CPUusPerACK in a forged-ACK flood.
type Baseline struct {
	// Path is always "kernel".
	Path          string  `json:"path"`
	TargetPPS     int     `json:"target_pps"`
	DurationS     float64 `json:"duration_s"`
	SYNsSent      int     `json:"syns_sent"`
	ACKsSent      int     `json:"acks_sent"`
	OfferedPPS    float64 `json:"offered_pps"`
	GatewayRxPPS  float64 `json:"gateway_rx_pps"`
	SynackPPS     float64 `json:"synack_pps"`
	BackendACKPPS float64 `json:"backend_ack_pps"`
	RSTPPS        float64 `json:"rst_pps"`
	LegitSuccess  float64 `json:"legit_success"`
	// The legitimate clients' handshake p50 and time to first byte with
	// the flood dropped before anything answers it: what the load costs
	// the lab itself (absent from reports recorded before them).
	LegitOK        int     `json:"legit_ok,omitempty"`
	LegitAttempts  int     `json:"legit_attempts,omitempty"`
	HandshakeP50ms float64 `json:"handshake_p50_ms,omitempty"`
	TTFBP50ms      float64 `json:"ttfb_p50_ms,omitempty"`
	TTFBP90ms      float64 `json:"ttfb_p90_ms,omitempty"`
	TTFBP99ms      float64 `json:"ttfb_p99_ms,omitempty"`
	// TotalP50ms is their request p50, what the reading holds each
	// system's against (absent from reports recorded before it).
	TotalP50ms float64 `json:"request_p50_ms,omitempty"`
	// LegitSYNRetrans is as in RunResult.
	LegitSYNRetrans *SYNRetrans `json:"legit_syn_retrans,omitempty"`
	BacklogDrops    uint64      `json:"backlog_drops"`
	WindowS         float64     `json:"window_s"`
	OtherLoad       float64     `json:"other_load"`
	Attempts        int         `json:"attempts"`
	CPUBusyS        float64     `json:"cpu_busy_s"`
	BenchCPUS       float64     `json:"bench_cpu_s"`
	FloodCPUS       float64     `json:"flood_cpu_s,omitempty"`
	BenchProcessS   float64     `json:"bench_process_cpu_s,omitempty"`
	OtherCPUS       float64     `json:"other_cpu_s"`
	// CPUusPerSYN is the baseline's whole cost per SYN in the
	// benchmark's own tasks: generating it, delivering it to the gateway
	// and dropping it; CPUusPerACK per forged ACK.
	CPUusPerSYN float64 `json:"cpu_us_per_syn"`
	CPUusPerACK float64 `json:"cpu_us_per_ack"`
}

// MarshalJSON writes the report with each run and baseline carrying the
// keys of the report's attack only (see RunResult): a forged-ACK run has
// no cpu_us_per_syn to misread, a SYN run no backend_ack_pps.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	out := struct {
		plain
		Runs      []json.RawMessage `json:"runs"`
		Baselines []json.RawMessage `json:"baselines"`
	}{plain: plain(r)}
	drop := synOnlyKeys
	if r.attack() == KindSYN {
		drop = ackOnlyKeys
	}
	var err error
	if out.Runs, err = marshalEach(r.Runs, drop); err != nil {
		return nil, err
	}
	if out.Baselines, err = marshalEach(r.Baselines, drop); err != nil {
		return nil, err
	}
	return json.Marshal(out)
}

// marshalEach is marshalWithout for each of vs.
func marshalEach[T any](vs []T, drop []string) ([]json.RawMessage, error) {
	var out []json.RawMessage // nil for none, as encoding/json writes it
	for _, v := range vs {
		b, err := marshalWithout(v, drop)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// The keys of figures only one attack has.
var (
	synOnlyKeys = []string{"syns_sent", "synack_pps", "cpu_us_per_syn", "machine_cpu_us_per_syn", "process_cpu_us_per_syn", "engine_syns"}
	ackOnlyKeys = []string{"acks_sent", "backend_ack_pps", "rst_pps", "cpu_us_per_ack", "machine_cpu_us_per_ack", "process_cpu_us_per_ack", "clients_cpu_us_per_ack"}
)

// marshalWithout writes v, a struct, as a JSON object without the keys in
// drop, the others in their order.
func marshalWithout(v any, drop []string) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // {
		return nil, err
	}
	out := []byte{'{'}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, err
		}
		if slices.Contains(drop, tok.(string)) {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		key, err := json.Marshal(tok.(string))
		if err != nil {
			return nil, err
		}
		out = append(out, key...)
		out = append(append(out, ':'), val...)
	}
	return append(out, '}'), nil
}

// attack is the report's attack, syn for reports recorded before it.
func (r *Report) attack() Kind {
	if r.Attack == KindACK {
		return KindACK
	}
	return KindSYN
}

// cpuPerPacket is the run's CPU µs per offered SYN or forged ACK.
func (run RunResult) cpuPerPacket(attack Kind) float64 {
	if attack == KindACK {
		return run.CPUusPerACK
	}
	return run.CPUusPerSYN
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
	// Recorded before "attack": a SYN flood, the only one there was.
	if r.Attack, err = ParseKind(string(r.Attack)); err != nil {
		return nil, fmt.Errorf("load report %s: attack: %w", path, err)
	}
	for i := range r.Runs {
		run := &r.Runs[i]
		if _, err := ParseSystem(string(run.System)); err != nil {
			return nil, fmt.Errorf("load report %s: run %d: %w", path, i, err)
		}
		switch {
		case run.Queues < 0 || run.Queues > MaxQueues:
			return nil, fmt.Errorf("load report %s: run %d: %d queues outside 0..%d", path, i, run.Queues, MaxQueues)
		case run.System.IsSynguard() && run.Queues == 0:
			// Recorded before "queues": synguard ran with one.
			run.Queues = 1
		case !run.System.IsSynguard() && run.Queues != 0:
			return nil, fmt.Errorf("load report %s: run %d: %s has no queues, but %d are recorded", path, i, run.System, run.Queues)
		}
		switch {
		case run.Path == "" && run.System.IsSynguard():
			// Recorded before "path": synguard had no XDP fast path.
			run.Path = PathNFQueue
		case run.Path == "":
			run.Path = PathKernel
		case run.System.IsSynguard() && run.Path != PathXDP && run.Path != PathTC && run.Path != PathNFQueue,
			!run.System.IsSynguard() && run.Path != PathKernel:
			return nil, fmt.Errorf("load report %s: run %d: %s with path %q", path, i, run.System, run.Path)
		}
	}
	for i := range r.Baselines {
		if r.Baselines[i].Path == "" {
			r.Baselines[i].Path = PathKernel
		}
	}
	for i, n := range r.NoFlood {
		if _, err := ParseSystem(string(n.System)); err != nil {
			return nil, fmt.Errorf("load report %s: run without a flood %d: %w", path, i, err)
		}
		if (n.System.IsSynguard() && (n.Queues < 1 || n.Queues > MaxQueues)) || (!n.System.IsSynguard() && n.Queues != 0) {
			return nil, fmt.Errorf("load report %s: run without a flood %d: %s with %d queues", path, i, n.System, n.Queues)
		}
	}
	for i, n := range r.ServerFirst {
		if _, err := ParseSystem(string(n.System)); err != nil {
			return nil, fmt.Errorf("load report %s: server-first run %d: %w", path, i, err)
		}
		if (n.System.IsSynguard() && (n.Queues < 1 || n.Queues > MaxQueues)) || (!n.System.IsSynguard() && n.Queues != 0) {
			return nil, fmt.Errorf("load report %s: server-first run %d: %s with %d queues", path, i, n.System, n.Queues)
		}
	}
	if r.Config.ClientRTTms < 0 || r.Config.MeasuredRTTms < 0 {
		return nil, fmt.Errorf("load report %s: negative client RTT", path)
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

// sortedServerFirst is the server-first runs in the systems' order.
func (r *Report) sortedServerFirst() []ServerFirstRun {
	rows := slices.Clone(r.ServerFirst)
	slices.SortStableFunc(rows, func(a, b ServerFirstRun) int { return compareVariants(a.variant(), b.variant()) })
	return rows
}

func compareVariants(a, b variant) int {
	return cmp.Or(cmp.Compare(systemIndex(a.sys), systemIndex(b.sys)), cmp.Compare(a.queues, b.queues))
}

// variant is the run's system and queue count; a synguard run without a
// count ran with one.
func (run RunResult) variant() variant {
	v := variant{sys: run.System, queues: run.Queues}
	if v.sys.IsSynguard() && v.queues == 0 {
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

// variants lists the systems present, synguard and synguard-nfqueue once
// per queue count, in report order.
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
	if !v.sys.IsSynguard() || !r.showQueues() {
		return string(v.sys)
	}
	if v.queues == 1 {
		return fmt.Sprintf("%s ×1 queue", v.sys)
	}
	return fmt.Sprintf("%s ×%d queues", v.sys, v.queues)
}

// answered is the share of offered SYNs that got a SYN-ACK.
func (run RunResult) answered() float64 {
	if run.OfferedPPS <= 0 {
		return 0
	}
	return run.SynackPPS / run.OfferedPPS
}

// reachedBackend is the share of offered forged ACKs that reached the
// backend.
func (run RunResult) reachedBackend() float64 {
	if run.OfferedPPS <= 0 {
		return 0
	}
	return run.BackendACKPPS / run.OfferedPPS
}

// path is the run's path, for a run made in memory without one: synguard
// through its queue, the kernel systems in the kernel.
func (run RunResult) path() string {
	switch {
	case run.Path != "":
		return run.Path
	case run.System.IsSynguard():
		return PathNFQueue
	}
	return PathKernel
}

// attackWords is what report.md calls the flood's packets.
type attackWords struct {
	flood string // the attack: "SYN flood"
	unit  string // one of its packets in a sentence: "SYN"
	short string // in a column header: "SYN"
}

func (r *Report) words() attackWords {
	if r.attack() == KindACK {
		return attackWords{flood: "forged-ACK flood", unit: "forged ACK", short: "ACK"}
	}
	return attackWords{flood: "SYN flood", unit: "SYN", short: "SYN"}
}

// TableMarkdown writes the results table alone, as the README carries it.
// A SYN flood's table has the SYN-ACKs and the share of SYNs answered; a
// forged-ACK flood's has the forged ACKs that reached the backend and the
// RSTs the flood drew toward the spoofed sources instead.
func (r *Report) TableMarkdown(w io.Writer) error {
	var b strings.Builder
	ack := r.attack() == KindACK
	if ack {
		b.WriteString("| target | system | queues | path | forged ACK/s offered | reached backend/s | RST/s to sources | legit ok | SYN retransmitted | handshake p50 / p99 | request p50 / p99 | CPU µs/ACK | queue drops | peak RSS | other load |\n")
	} else {
		b.WriteString("| target | system | queues | path | offered SYN/s | SYN-ACK/s | answered | legit ok | SYN retransmitted | handshake p50 / p99 | request p50 / p99 | CPU µs/SYN | queue drops | peak RSS | other load |\n")
	}
	b.WriteString("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, run := range r.sortedRuns() {
		// The kernel systems have no queue and no process of their own.
		queues, drops, rss := "n/a", "n/a", "n/a"
		if run.System.IsSynguard() {
			queues = fmt.Sprint(run.variant().queues)
			drops = fmtCount(float64(run.QueueDrops))
			rss = fmt.Sprintf("%.1f MiB", run.GatewayRSSMB)
		}
		flood := fmt.Sprintf("%s | %s | %.1f%%", fmtCount(run.OfferedPPS), fmtCount(run.SynackPPS), 100*run.answered())
		if ack {
			flood = fmt.Sprintf("%s | %s | %s", fmtCount(run.OfferedPPS), fmtCount(run.BackendACKPPS), fmtCount(run.RSTPPS))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.1f%% (%d/%d) | %s | %s / %s ms | %s / %s ms | %.2f | %s | %s | %.0f%% |\n",
			rateName(run.TargetPPS), run.System, queues, run.path(), flood,
			100*run.LegitSuccess, run.LegitOK, run.LegitAttempts, run.LegitSYNRetrans.cell(),
			fmtMS(run.HandshakeP50ms), fmtMS(run.HandshakeP99ms), fmtMS(run.TotalP50ms), fmtMS(run.TotalP99ms),
			run.cpuPerPacket(r.attack()), drops, rss, 100*run.OtherLoad)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMarkdown writes report.md: what was run, the results table, a
// reading of it, the baselines, the method and the plots.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	words := r.words()
	ack := r.attack() == KindACK
	fmt.Fprintf(&b, "# synguard bench: %s, side by side\n\n", words.flood)
	fam := cmp.Or(r.Family, IPv4)
	fmt.Fprintf(&b, "Address family: **%s** (service %s, flood from %s).\n\n",
		fam, familyReport(fam).service, familyReport(fam).spoof)
	if ack {
		b.WriteString("The flood is forged ACKs (`--attack ack`): TCP segments with the ACK flag alone and random sequence and " +
			"acknowledgement numbers, from random spoofed sources and ports, which belong to no connection and carry no valid cookie. " +
			"A protected backend should see none of them, and nothing should reply to them: the table counts the forged ACKs that reached the backend " +
			"and the RSTs the flood drew back, where a SYN flood's counts SYN-ACKs.\n\n")
	}
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
	b.WriteString("\n")
	for _, pl := range r.plotSpecs() {
		fmt.Fprintf(&b, "![%s](%s)\n", pl.alt, pl.file)
	}
	b.WriteString("\n")
	r.writeTTFB(&b)
	r.writeServerFirst(&b)
	r.writeRounds(&b)

	b.WriteString("## Reading\n\n")
	for _, line := range r.reading() {
		fmt.Fprintf(&b, "- %s\n", line)
	}

	b.WriteString("\n## Baselines\n\n")
	fmt.Fprintf(&b, "The gateway drops the flood in raw PREROUTING (`%s -t raw -A PREROUTING -s %s -d BACKEND -p tcp %s -j DROP`).\n\n",
		familyNet(fam).iptables, familyReport(fam).spoof, strings.Join(floodMatch(r.attack()), " "))
	if ack {
		b.WriteString("| target | forged ACK/s offered | gateway received/s | reached backend/s | benchmark CPU | CPU µs/ACK, all in | backlog drops | legit ok | other load |\n")
	} else {
		b.WriteString("| target | offered SYN/s | gateway received/s | SYN-ACK/s | benchmark CPU | CPU µs/SYN, all in | backlog drops | legit ok | other load |\n")
	}
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	bases := slices.Clone(r.Baselines)
	slices.SortStableFunc(bases, func(a, b Baseline) int { return cmp.Compare(rateKey(a.TargetPPS), rateKey(b.TargetPPS)) })
	for _, base := range bases {
		replies, cpu := base.SynackPPS, base.CPUusPerSYN
		if ack {
			replies, cpu = base.BackendACKPPS, base.CPUusPerACK
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.2f s | %.2f | %s | %.1f%% | %.0f%% |\n",
			rateName(base.TargetPPS), fmtCount(base.OfferedPPS), fmtCount(base.GatewayRxPPS),
			fmtCount(replies), base.BenchCPUS, cpu,
			fmtCount(float64(base.BacklogDrops)), 100*base.LegitSuccess, 100*base.OtherLoad)
	}

	b.WriteString("\n## Method\n\n")
	b.WriteString(familyReport(fam).method.Replace(methodText(r.attack())))
	if r.Config.ClientRTTms > 0 {
		b.WriteString(methodClientRTT)
	}
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

// methodText is report.md's method for an attack; familyReport fills in
// {service}, {spoof} and {lab}.
func methodText(attack Kind) string {
	unit, per, floodDesc, replies, drops, quiet := "SYN", "SYN", methodSYNFlood, methodSYNACKs, methodSYNDrops, ""
	if attack == KindACK {
		unit, per, floodDesc, replies, drops, quiet = "forged ACK", "ACK", methodACKFlood, methodACKReplies, methodACKDrops, methodACKQuiet
	}
	return strings.NewReplacer("{unit}", unit, "{per}", per, "{lower}", strings.ToLower(per)).Replace(
		methodLab + methodSystems + methodPath + floodDesc + replies + methodLegit + methodCPU + quiet + drops + methodRest)
}

const methodLab = `- **Lab.** Three network namespaces on one machine: client, gateway, backend,
  joined by veth pairs (` + "`lab.Up`" + `, {lab}). The backend is an in-process Go HTTP
  server on {service}, restarted before every run so that no half-open
  requests carry over.
`

const methodSystems = `- **Systems.** *synguard*: ` + "`synguard run --protect {service} --mode always --queues N`" + ` in the
  gateway namespace with its defaults, so with its XDP fast path (` + "`--xdp auto`" + `: generic mode on
  the lab's veth links): its XDP program answers SYNs and drops forged ACKs on the gateway's
  links before netfilter sees them, and passes the rest (valid cookie ACKs, established flows)
  to the NFQUEUE path. *synguard-nfqueue*: the same with ` + "`--xdp off`" + `, every packet through the
  NFQUEUE path, as synguard was before XDP. Each is a fresh process per run, measured once per
  queue count asked for (one by default; the table's queues column). With several queues
  netfilter spreads the queued packets over them by a hash of each flow's addresses and ports
  (` + "`--queue-balance`" + `), one worker each; every worker shares the machine's cores with the
  generator. *synproxy*: the kernel's SYNPROXY target as the iptables-extensions manual
  prescribes, in FORWARD: ` + "`nf_conntrack_tcp_loose=0`" + `; ` + "`raw PREROUTING --syn -j CT --notrack`" + `;
  ` + "`FORWARD -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY --sack-perm --timestamp --wscale W --mss M`" + `
  with the backend's own values; ` + "`FORWARD -m conntrack --ctstate INVALID -j DROP`" + `.
  *none*: plain forwarding; the backend answers with the kernel's SYN cookies
  (` + "`net.ipv4.tcp_syncookies=1`" + `).
`

const methodPath = `- **Path** (report.json's ` + "`path`" + `) is how the flood was handled, read from synguard's metrics
  over the run: *xdp* when its XDP program sent the SYN-ACKs (` + "`synguard_xdp_packets_total{action=\"tx\"}`" + `
  grew) or, in a forged-ACK flood, dropped packets (` + "`action=\"drop\"`" + `); *tc* when its tc program (the same
  code at tc ingress, attached through tcx links) did; *nfqueue* for a synguard run without that (always
  for synguard-nfqueue); *kernel* for synproxy, none and the baselines.
`

const methodSYNFlood = `- **Offered load** is the rate the generator achieved (SYNs sent / flood time), from
  random sources in {spoof} with random ports and ISNs, from the client namespace.
  "max" is as fast as it goes; it then competes for the CPUs with what it floods.
`

const methodACKFlood = `- **Offered load** is the rate the generator achieved (forged ACKs sent / flood time), from
  the client namespace: TCP segments with the ACK flag alone, random sequence and acknowledgement
  numbers, from random sources in {spoof} and random ports, with the NOP, NOP, timestamps
  options and the window (502) of a Linux client's handshake ACK, random timestamps. They
  belong to no connection and carry no valid cookie. "max" is as fast as the generator goes;
  it then competes for the CPUs with what it floods.
`

const methodSYNACKs = `- **SYN-ACK/s** counts SYN-ACKs toward {spoof} arriving in the client namespace, with a
  match-only rule in its raw PREROUTING on the interface facing the gateway: every system's
  SYN-ACKs arrive there however they left the gateway (synguard's XDP program's sent back out
  of the link, its NFQUEUE path's out of the ingress link, SYNPROXY's through the local output
  path, the backend's forwarded), and a rule counter costs the same in every run.
  *Answered* is SYN-ACK/s over offered SYN/s.
`

const methodACKReplies = `- **Reached backend/s** counts forged ACKs arriving in the backend namespace, with a
  match-only rule in its raw PREROUTING (from {spoof} to the service, the ACK flag alone):
  what a protection let through. **RST/s to sources** counts RSTs toward {spoof} arriving in
  the client namespace, with a rule like the SYN flood's SYN-ACK counter: what the flood drew
  back, since a backend answers an ACK that matches no connection with a RST. Each rule
  counter costs the same in every run.
`

const methodLegit = `- **Legit ok, handshake, request.** Legitimate clients start at a fixed rate during the
  flood from the client's real address; each connects, sends ` + "`GET /bytes/1024`" + ` and checks
  the body, within the probe timeout. Handshake is connect() until established; request
  is connect() until the body was checked. Latencies are nearest-rank percentiles over
  the clients that succeeded. **SYN retransmitted** counts the clients, failed ones
  included, whose kernel had to send its SYN again, from TCP_INFO's tcpi_total_retrans
  read right after connect() (for a connect that failed, the retransmissions its
  duration implies: one at 1 s, two at 3 s): a SYN or SYN-ACK dropped on the way,
  each costing its client at least 1 s.
`

const methodCPU = `- **CPU µs/{per}.** All namespaces share the same kernel and cores, and veth delivery runs
  in the sender's softirq, so no one process's CPU time isolates a system's cost. So
  each system's run is paired with a baseline at the same target rate in which the
  gateway drops the flood in raw PREROUTING, and CPU µs/{per} = CPU/{unit}s − baseline
  CPU/baseline {unit}s, which is (CPU − baseline CPU) / {unit}s offered when both sent as many:
  generating the flood and carrying it to the gateway cancel out. The replies to the
  spoofed sources are dropped as they arrive in the client namespace (mangle PREROUTING,
  after the counting rules), as they would leave for the internet from a real gateway,
  so only their sending counts. The CPU time is the
  run time, over the flood plus a short settle, of every task that does the
  flood's work: the generator's thread, the processes in the lab's namespaces
  (synguard) and the kernel threads (ksoftirqd, kworkers), to the nanosecond from each
  thread's schedstat; softirq work is charged to the task it ran in, which for veth is
  the sender. The rest of the benchmark process (the legitimate clients, the backend)
  and other people's processes on a shared machine are left out. The whole machine's
  busy time from /proc/stat (user + nice + system + irq +
  softirq + steal) gives the same figure in report.json as machine_cpu_us_per_{lower};
  it counts every other process too and is sampled at the timer tick, so on a busy
  or bursty machine it is much noisier. Either is noisy at low rates. synguard's XDP
  program runs before raw PREROUTING, where the baseline drops the flood, so a figure
  at or below zero means it cost no more than the baseline's drop.
`

const methodACKQuiet = `- **Without the flood.** Before the rates, the baseline and every system are measured
  without a flood, the same legitimate clients for as long, and CPU µs/ACK counts what
  each spent beyond that run, over as long (and the baseline likewise): the flood's cost.
  A forged-ACK flood leaves synguard's services in passthrough, as they are without a
  flood, so its legitimate clients' handshakes cross its queues in both, and the kernel
  work each verdict sets off (the backend's and the client's stacks, over veth) runs in
  its process, with its own upkeep; the kernel systems do the same clients' work in the
  benchmark process, which the measure leaves out. report.json has the part left out as
  clients_cpu_us_per_ack (their sum is the figure before 2026-12-05), and the runs
  without a flood under no_flood and no_flood_baseline.
`

const methodSYNDrops = `- **Queue drops** is ` + "`synguard_queue_dropped_total`" + ` over the run, summed over synguard's
  queues (SYN and completion): packets the kernel dropped because a queue or its socket was full
  (fail closed), SYNs in synguard-nfqueue. The kernel systems have no queue.
`

const methodACKDrops = `- **Queue drops** is ` + "`synguard_queue_dropped_total`" + ` over the run, summed over synguard's
  queues: packets the kernel dropped because a queue or its socket was full (fail closed).
  synguard-nfqueue queues every ACK conntrack finds INVALID, the forged ones among them, to its
  completion queues; with XDP they are dropped before they are queued. The kernel systems have no queue.
`

const methodRest = `- **Backlog drops** (report.json and the baselines table) is packets the kernel dropped,
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
	ack := r.attack() == KindACK
	for _, v := range r.variants() {
		var runs []RunResult
		for _, run := range r.sortedRuns() {
			if run.variant() == v {
				runs = append(runs, run)
			}
		}
		if ack {
			lines = append(lines, readSystemACK(r.label(v), v.sys, runs))
		} else {
			lines = append(lines, readSystem(r.label(v), v.sys, runs))
		}
	}
	if !ack {
		for _, sys := range AllSystems {
			if line := r.readQueues(sys); line != "" {
				lines = append(lines, line)
			}
		}
	}
	if line := r.readAgainstSynproxy(); line != "" {
		lines = append(lines, line)
	}
	if line := r.readTTFB(); line != "" {
		lines = append(lines, line)
	}
	if line := r.readServerFirst(); line != "" {
		lines = append(lines, line)
	}
	if line := r.readShortfall(); line != "" {
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
			if ack {
				parts = append(parts, fmt.Sprintf("%s let %s of %s forged ACK/s offered reach the backend (legit %.0f%%)",
					r.label(run.variant()), fmtCount(run.BackendACKPPS), fmtCount(run.OfferedPPS), 100*run.LegitSuccess))
				continue
			}
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

// readAgainstSynproxy sets each system's request p50 against SYNPROXY's,
// rate by rate, beside the baseline's: the same clients with nothing
// answering the flood, what a gateway that cost nothing would get. How
// far the baseline's ratio strays from 1 is how far this run's ratios
// move for reasons of the machine. Empty without SYNPROXY's runs or the
// baselines' request p50 (reports recorded before it).
func (r *Report) readAgainstSynproxy() string {
	proxy := make(map[int]float64)
	for _, run := range r.Runs {
		if run.System == Synproxy && run.TotalP50ms > 0 {
			proxy[run.TargetPPS] = run.TotalP50ms
		}
	}
	base := make(map[int]float64)
	for _, b := range r.Baselines {
		if _, ok := proxy[b.TargetPPS]; ok && b.TotalP50ms > 0 {
			base[b.TargetPPS] = b.TotalP50ms
		}
	}
	if len(base) == 0 {
		return ""
	}
	rates := slices.SortedFunc(maps.Keys(proxy), func(a, b int) int { return cmp.Compare(rateKey(a), rateKey(b)) })
	names := make([]string, len(rates))
	for i, rate := range rates {
		names[i] = rateName(rate)
	}
	ratios := func(p50 func(rate int) (float64, bool)) string {
		out := make([]string, len(rates))
		for i, rate := range rates {
			out[i] = "n/a"
			if v, ok := p50(rate); ok && v > 0 {
				out[i] = fmt.Sprintf("%.2f", v/proxy[rate])
			}
		}
		return strings.Join(out, ", ")
	}
	var parts []string
	for _, v := range r.variants() {
		if v.sys == Synproxy {
			continue
		}
		parts = append(parts, r.label(v)+" "+ratios(func(rate int) (float64, bool) {
			i := slices.IndexFunc(r.Runs, func(run RunResult) bool { return run.variant() == v && run.TargetPPS == rate })
			if i < 0 {
				return 0, false
			}
			return r.Runs[i].TotalP50ms, true
		}))
	}
	parts = append(parts, "the baseline "+ratios(func(rate int) (float64, bool) { v, ok := base[rate]; return v, ok }))
	return fmt.Sprintf("**Request p50 against SYNPROXY's** (at %s): %s. The baseline's clients are the same, with the flood "+
		"dropped before anything answers it: a gateway that cost nothing would get its figures, so how far its ratios "+
		"stray from 1 is how far this run moves a ratio for reasons of the machine, not of the system.",
		strings.Join(names, ", "), strings.Join(parts, "; "))
}

// readQueues compares one synguard system's queue counts at the highest
// load, where one queue is most likely to be the bottleneck: what each
// answered against the fewest queues, what its queues dropped and how
// evenly --queue-balance spread the flood. Empty unless the report has
// more than one count of sys.
func (r *Report) readQueues(sys System) string {
	var runs []RunResult
	for _, run := range r.atHighestLoad() {
		if run.System == sys {
			runs = append(runs, run)
		}
	}
	if len(runs) < 2 {
		return ""
	}
	first, q1 := runs[0], runs[0].variant().queues
	var s strings.Builder
	fmt.Fprintf(&s, "**Queues** (%s at %s): with %d %s it answered %s SYN-ACK/s of %s offered (%.0f%%; %s queue drops)",
		sys, rateName(first.TargetPPS), q1, plural(q1, "queue", "queues"), fmtCount(first.SynackPPS),
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

// systemTally is what every system's reading needs of its runs.
type systemTally struct {
	minLegit  RunResult // the run with the fewest legitimate successes
	cpus      []float64 // CPU per packet at 10k packets/s and above
	drops     uint64    // queue drops in all
	firstDrop *RunResult
	// synRetrans is the runs' legitimate clients whose SYN was
	// retransmitted, in all, and mostRetrans the run with most of them;
	// measured says whether the report has the figure at all.
	synRetrans  int
	mostRetrans *RunResult
	measured    bool
}

// add counts run, whose CPU per packet is cpu.
func (t *systemTally) add(run *RunResult, cpu float64) {
	if run.LegitSuccess < t.minLegit.LegitSuccess {
		t.minLegit = *run
	}
	// Below about 10k packets/s the figure is mostly noise.
	if run.OfferedPPS >= 10_000 {
		t.cpus = append(t.cpus, cpu)
	}
	t.drops += run.QueueDrops
	if run.QueueDrops > 0 && t.firstDrop == nil {
		t.firstDrop = run
	}
	if r := run.LegitSYNRetrans; r != nil {
		t.measured = true
		t.synRetrans += r.Clients
		if r.Clients > 0 && (t.mostRetrans == nil || r.Clients > t.mostRetrans.LegitSYNRetrans.Clients) {
			t.mostRetrans = run
		}
	}
}

func readSystem(label string, sys System, runs []RunResult) string {
	var (
		kept      float64 // highest offered load answered ≥ 95%
		firstFail *RunResult
		t         = systemTally{minLegit: runs[0]}
	)
	for i := range runs {
		run := runs[i]
		if run.answered() >= 0.95 {
			kept = max(kept, run.OfferedPPS)
		} else if firstFail == nil {
			firstFail = &runs[i]
		}
		t.add(&runs[i], run.CPUusPerSYN)
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
	writeLegitAndCPU(&s, &t, "SYN", "SYN/s")
	if over := slices.IndexFunc(runs, func(r RunResult) bool { return r.answered() > 1.05 }); over >= 0 {
		fmt.Fprintf(&s, ". More SYN-ACKs than SYNs (%.0f%% at %s SYN/s): the backend retransmits the SYN-ACK of every half-open connection in its SYN queue until the queue overflows into cookies",
			100*runs[over].answered(), fmtCount(runs[over].OfferedPPS))
	}
	if sys.IsSynguard() {
		writeQueueAndPaths(&s, runs, &t,
			". Its queue dropped SYNs from %s SYN/s offered on (%s in all): the kernel answers nothing for those, and a dropped legitimate SYN is retried by the client after 1 s")
	}
	s.WriteString(".")
	return s.String()
}

// readPaths says how a synguard system handled the flood over its runs:
// ". Path: xdp in every run", or by rate where it changed.
func readPaths(runs []RunResult) string {
	var byPath [][2]string // path, rates
	for _, run := range runs {
		p := run.path()
		if n := len(byPath); n > 0 && byPath[n-1][0] == p {
			byPath[n-1][1] += ", " + rateName(run.TargetPPS)
			continue
		}
		byPath = append(byPath, [2]string{p, rateName(run.TargetPPS)})
	}
	switch len(byPath) {
	case 0:
		return ""
	case 1:
		return ". Path: " + byPath[0][0] + " in every run"
	}
	parts := make([]string, len(byPath))
	for i, p := range byPath {
		parts[i] = p[0] + " at " + p[1]
	}
	return ". Path: " + strings.Join(parts, "; ")
}

// maxBackend is the most forged ACKs per second that reached the backend
// in any of runs.
func maxBackend(runs []RunResult) float64 {
	var m float64
	for _, run := range runs {
		m = max(m, run.BackendACKPPS)
	}
	return m
}

// readShortfall names the runs at a target rate whose generator sent less
// than 90% of it: the machine's cores were busy with what the system under
// test cost, so it was offered less than the other systems.
func (r *Report) readShortfall() string {
	var short []string
	for _, run := range r.sortedRuns() {
		if run.TargetPPS > 0 && run.OfferedPPS < 0.9*float64(run.TargetPPS) {
			short = append(short, fmt.Sprintf("%s at %s (%s/s offered)", r.label(run.variant()), rateName(run.TargetPPS), fmtCount(run.OfferedPPS)))
		}
	}
	if len(short) == 0 {
		return ""
	}
	return "The generator fell short of the target rate for " + strings.Join(short, ", ") +
		": it shares the cores with the system under test, and what that system cost was taken from the flood, so those rows were offered less than the others at the same target."
}

// readSystemACK reads one system's runs under a forged-ACK flood: how
// many forged ACKs reached the backend, what they drew back, what the
// legitimate clients saw and the cost per forged ACK.
func readSystemACK(label string, sys System, runs []RunResult) string {
	var (
		worst  = runs[0] // most forged ACKs through, as a share
		least  = runs[0] // fewest
		t      = systemTally{minLegit: runs[0]}
		maxRST float64
	)
	for i := range runs {
		run := runs[i]
		if run.reachedBackend() > worst.reachedBackend() {
			worst = run
		}
		if run.reachedBackend() < least.reachedBackend() {
			least = run
		}
		t.add(&runs[i], run.CPUusPerACK)
		maxRST = max(maxRST, run.RSTPPS)
	}
	top := runs[len(runs)-1]
	var s strings.Builder
	fmt.Fprintf(&s, "**%s**: ", label)
	switch {
	case worst.reachedBackend() <= 0.01:
		fmt.Fprintf(&s, "kept the forged ACKs from the backend at every load, up to %s ACK/s offered (at most %s/s reached it)",
			fmtCount(top.OfferedPPS), fmtCount(worst.BackendACKPPS))
	case least.reachedBackend() >= 0.99:
		fmt.Fprintf(&s, "let every forged ACK through to the backend, at every load (up to %s/s)", fmtCount(maxBackend(runs)))
	default:
		fmt.Fprintf(&s, "let forged ACKs through to the backend: up to %.0f%% of those offered (at %s ACK/s, %s/s)",
			100*worst.reachedBackend(), fmtCount(worst.OfferedPPS), fmtCount(worst.BackendACKPPS))
	}
	if maxRST > 0.01*top.OfferedPPS {
		fmt.Fprintf(&s, "; the backend replied with up to %s RST/s toward the spoofed sources", fmtCount(maxRST))
	}
	writeLegitAndCPU(&s, &t, "forged ACK", "ACK/s")
	if sys.IsSynguard() {
		writeQueueAndPaths(&s, runs, &t,
			". Its queue dropped packets from %s ACK/s offered on (%s in all): a dropped legitimate handshake ACK is one its client retransmits")
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
	if m.BPFStats {
		s += ", BPF run-time stats on (synguard's programs slowed)"
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

// writeLegitAndCPU ends a system's reading: the worst legitimate success
// (at its offered rate), with the kinds of failure, and the range of CPU
// per packet at 10k packets/s and above. unit names a packet ("SYN"),
// rate its rate ("SYN/s").
func writeLegitAndCPU(s *strings.Builder, t *systemTally, unit, rate string) {
	minLegit, cpus := t.minLegit, t.cpus
	fmt.Fprintf(s, ". Legitimate clients: at worst %.0f%% succeeded (at %s %s offered, handshake p99 %s ms",
		100*minLegit.LegitSuccess, fmtCount(minLegit.OfferedPPS), rate, fmtMS(minLegit.HandshakeP99ms))
	if len(minLegit.ProbeErrors) > 0 {
		kinds := slices.Sorted(maps.Keys(minLegit.ProbeErrors))
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%d × %s", minLegit.ProbeErrors[k], k)
		}
		fmt.Fprintf(s, "; failures: %s", strings.Join(parts, ", "))
	}
	s.WriteString(")")
	switch {
	case t.mostRetrans != nil:
		most := t.mostRetrans
		fmt.Fprintf(s, "; %d of them had to send their SYN again, each waiting at least 1 s (most at %s %s offered: %d of %d, %.1f%%)",
			t.synRetrans, fmtCount(most.OfferedPPS), rate, most.LegitSYNRetrans.Clients, most.LegitAttempts, 100*most.LegitSYNRetrans.Share)
	case t.measured:
		s.WriteString("; none had to send its SYN again")
	}
	if len(cpus) > 0 {
		slices.Sort(cpus)
		fmt.Fprintf(s, ". CPU per %s %.1f–%.1f µs at 10k %s and above", unit, cpus[0], cpus[len(cpus)-1], rate)
	}
}

// writeQueueAndPaths adds a synguard system's queue drops to its reading,
// with dropped, a format taking the first rate with drops and their
// total, and the paths its runs took.
func writeQueueAndPaths(s *strings.Builder, runs []RunResult, t *systemTally, dropped string) {
	if t.firstDrop != nil {
		fmt.Fprintf(s, dropped, fmtCount(t.firstDrop.OfferedPPS), fmtCount(float64(t.drops)))
	} else {
		s.WriteString(". Its queue dropped nothing")
	}
	s.WriteString(readPaths(runs))
}

// hasTTFB says whether the report measured the time to first byte.
func (r *Report) hasTTFB() bool {
	return len(r.NoFlood) > 0 || slices.ContainsFunc(r.Runs, func(run RunResult) bool { return run.TTFBP50ms > 0 })
}

// inRTTs is a time to first byte in client round trips ("3.0"), or
// "n/a" without a client RTT.
func (r *Report) inRTTs(ms float64) string {
	if r.Config.ClientRTTms <= 0 || ms <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", ms/r.Config.ClientRTTms)
}

// writeTTFB writes report.md's time-to-first-byte section: each system
// without a flood and at every rate, in round trips when the clients
// were a round trip away.
func (r *Report) writeTTFB(b *bytes.Buffer) {
	if !r.hasTTFB() {
		return
	}
	b.WriteString("## Time to first byte\n\n")
	if rtt := r.Config.ClientRTTms; rtt > 0 {
		fmt.Fprintf(b, "The legitimate clients were a round trip of %s ms from the gateway (`--client-rtt`; %s ms measured to the backend, "+
			"ICMP echo p50), behind the lab's delay relay, while the flood kept its direct path. "+
			"Time to first byte is connect() until the response's first byte. A client that speaks first (HTTP, TLS) "+
			"gets it two round trips after connect() from a path that lets its request through with the handshake, "+
			"three from a proxy that answers the handshake with a zero window (SYNPROXY, synguard's cookies): "+
			"the request waits for the window the proxy opens once the backend's handshake is done.",
			fmtFloat(rtt), fmtFloat(r.Config.MeasuredRTTms))
	} else {
		b.WriteString("Time to first byte is connect() until the response's first byte, for the legitimate clients that succeeded.")
	}
	if slices.ContainsFunc(r.Baselines, func(base Baseline) bool { return base.TTFBP50ms > 0 }) {
		b.WriteString(" The baseline rows are the same clients with the flood dropped in raw PREROUTING, before anything answers it: " +
			"what the load costs the lab itself, whose cores the flood shares.")
	}
	b.WriteString("\n\n")
	b.WriteString("| system | queues | flood | legit ok | handshake p50 | first byte p50 / p90 / p99 | p50 in RTTs |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|\n")
	row := func(v variant, flood string, ok, attempts int, success, hs, p50, p90, p99 float64) {
		queues := "n/a"
		if v.sys.IsSynguard() {
			queues = fmt.Sprint(v.queues)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %.1f%% (%d/%d) | %s ms | %s / %s / %s ms | %s |\n",
			v.sys, queues, flood, 100*success, ok, attempts, fmtMS(hs), fmtMS(p50), fmtMS(p90), fmtMS(p99), r.inRTTs(p50))
	}
	vs := r.variants()
	for _, n := range r.NoFlood {
		if !slices.Contains(vs, n.variant()) {
			vs = append(vs, n.variant())
		}
	}
	slices.SortFunc(vs, compareVariants)
	runs := r.sortedRuns()
	bases := slices.Clone(r.Baselines)
	slices.SortStableFunc(bases, func(a, b Baseline) int { return cmp.Compare(rateKey(a.TargetPPS), rateKey(b.TargetPPS)) })
	for _, base := range bases {
		if base.TTFBP50ms > 0 {
			fmt.Fprintf(b, "| baseline | n/a | %s | %.1f%% (%d/%d) | %s ms | %s / %s / %s ms | %s |\n",
				rateName(base.TargetPPS), 100*base.LegitSuccess, base.LegitOK, base.LegitAttempts, fmtMS(base.HandshakeP50ms),
				fmtMS(base.TTFBP50ms), fmtMS(base.TTFBP90ms), fmtMS(base.TTFBP99ms), r.inRTTs(base.TTFBP50ms))
		}
	}
	for _, v := range vs {
		for _, n := range r.NoFlood {
			if n.variant() == v {
				row(v, rateName(noFlood), n.LegitOK, n.LegitAttempts, n.LegitSuccess, n.HandshakeP50ms, n.TTFBP50ms, n.TTFBP90ms, n.TTFBP99ms)
			}
		}
		for _, run := range runs {
			if run.variant() == v {
				row(v, rateName(run.TargetPPS), run.LegitOK, run.LegitAttempts, run.LegitSuccess, run.HandshakeP50ms, run.TTFBP50ms, run.TTFBP90ms, run.TTFBP99ms)
			}
		}
	}
	b.WriteString("\n")
}

// readTTFB compares the systems' time to first byte at the client RTT,
// without a flood and at the highest load; empty without a client RTT.
func (r *Report) readTTFB() string {
	if r.Config.ClientRTTms <= 0 {
		return ""
	}
	part := func(label string, ms float64) string {
		return fmt.Sprintf("%s %s ms (%s RTT)", label, fmtMS(ms), r.inRTTs(ms))
	}
	var quiet, loaded []string
	for _, n := range r.NoFlood {
		if n.TTFBP50ms > 0 {
			quiet = append(quiet, part(r.label(n.variant()), n.TTFBP50ms))
		}
	}
	top := r.atHighestLoad()
	for _, run := range top {
		if run.TTFBP50ms > 0 {
			loaded = append(loaded, part(r.label(run.variant()), run.TTFBP50ms))
		}
	}
	if len(quiet) == 0 && len(loaded) == 0 {
		return ""
	}
	s := fmt.Sprintf("**Time to first byte** (p50) with the clients %s ms away", fmtFloat(r.Config.ClientRTTms))
	if len(quiet) > 0 {
		s += ", without a flood: " + strings.Join(quiet, ", ")
	}
	if len(loaded) > 0 {
		if len(quiet) > 0 {
			s += ";"
		}
		s += fmt.Sprintf(" under the flood at %s: %s", rateName(top[0].TargetPPS), strings.Join(loaded, ", "))
	}
	return s + "."
}

const methodClientRTT = `- **Client RTT.** The legitimate clients connect from a namespace of their own (192.0.2.2,
  or 2001:db8:d::2 over IPv6) behind a relay that forwards every Ethernet frame between it and
  the client namespace half the round trip after it arrived, each way, in order (` + "`lab.Relay`" + `:
  AF_PACKET sockets, the kernel's high-resolution timers); the client namespace routes them to
  the gateway over the link the flood comes in on. The flood is sent from the client namespace
  as always and its replies end there, so it never crosses the relay. Before the floods, each
  system is measured once without one (the time-to-first-byte table's "no flood" rows).
`

// writeServerFirst writes report.md's section on the clients of a
// protocol whose server speaks first, when they were measured.
func (r *Report) writeServerFirst(b *bytes.Buffer) {
	if len(r.ServerFirst) == 0 {
		return
	}
	b.WriteString("## Clients of a protocol whose server speaks first\n\n")
	b.WriteString("Each system once more without a flood, the backend now a server that greets first (as SMTP, SSH, FTP and MySQL do): " +
		"its clients connect, send nothing and wait for the greeting, which the backend writes once it has taken the gateway's ACK of its SYN-ACK. " +
		"A backend that rejects that ACK (for echoing a timestamp the backend never sent: TcpExt TSEcrRejected) waits for one it can take, " +
		"and sends its SYN-ACK again a second later (TCPSynRetrans): the greeting then comes a second late. " +
		"Both counters are the backend's over the run.\n\n")
	b.WriteString("| system | queues | legit ok | handshake p50 | greeting p50 / p90 / p99 | backend rejected ACKs | backend resent SYN-ACKs |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range r.sortedServerFirst() {
		queues := "n/a"
		if n.System.IsSynguard() {
			queues = fmt.Sprint(n.Queues)
		}
		fmt.Fprintf(b, "| %s | %s | %.1f%% (%d/%d) | %s ms | %s / %s / %s ms | %d | %d |\n",
			n.System, queues, 100*n.LegitSuccess, n.LegitOK, n.LegitAttempts, fmtMS(n.HandshakeP50ms),
			fmtMS(n.GreetingP50ms), fmtMS(n.GreetingP90ms), fmtMS(n.GreetingP99ms), n.BackendACKsRejected, n.BackendSYNACKsResent)
	}
	b.WriteString("\n")
}

// readServerFirst compares the systems' greeting times, and names the
// backend's rejected ACKs where there were any; empty without
// server-first runs.
func (r *Report) readServerFirst() string {
	if len(r.ServerFirst) == 0 {
		return ""
	}
	var parts []string
	for _, n := range r.sortedServerFirst() {
		part := fmt.Sprintf("%s %s ms", r.label(n.variant()), fmtMS(n.GreetingP50ms))
		if n.BackendACKsRejected > 0 {
			part += fmt.Sprintf(" (the backend rejected %d of its ACKs)", n.BackendACKsRejected)
		}
		parts = append(parts, part)
	}
	return "**A server that speaks first** greeted its clients (p50, connect() to the greeting, no flood): " + strings.Join(parts, ", ") + "."
}

// writeRounds writes each run's figures round by round, when the rates
// were measured in several: how far one round's figure moves from the
// next, and, where SYNPROXY ran, each round's ratio to its figure of the
// same round.
func (r *Report) writeRounds(b *bytes.Buffer) {
	if r.Config.Rounds < 2 {
		return
	}
	unit := r.words().short
	fmt.Fprintf(b, "## Rounds\n\nEach rate was measured in %d rounds, the baseline and the systems in turn, in the opposite order every other round; "+
		"the table above pools them (as one run of %d × %s s). Round by round, against that round's baseline:\n\n",
		r.Config.Rounds, r.Config.Rounds, fmtFloat(r.Config.DurationS))
	fmt.Fprintf(b, "| target | system | CPU µs/%s | ratio to SYNPROXY | request p50 ms | ratio to SYNPROXY | handshake p99 ms |\n", unit)
	b.WriteString("|---|---|---|---|---|---|---|\n")
	runs := r.sortedRuns()
	proxy := make(map[int]RunResult)
	for _, run := range runs {
		if run.System == Synproxy {
			proxy[run.TargetPPS] = run
		}
	}
	list := func(xs []Round, f func(Round) float64, base []Round) (vals, ratios string) {
		v := make([]string, len(xs))
		q := make([]string, 0, len(xs))
		for i, x := range xs {
			v[i] = fmt.Sprintf("%.2f", f(x))
			if i < len(base) && f(base[i]) > 0 {
				q = append(q, fmt.Sprintf("%.2f", f(x)/f(base[i])))
			}
		}
		if len(q) == 0 {
			q = append(q, "n/a")
		}
		return strings.Join(v, " / "), strings.Join(q, " / ")
	}
	for _, run := range runs {
		if len(run.Rounds) == 0 {
			continue
		}
		var base []Round
		if p, ok := proxy[run.TargetPPS]; ok && run.System != Synproxy {
			base = p.Rounds
		}
		cpu, cpuRatio := list(run.Rounds, func(x Round) float64 { return x.CPUus }, base)
		p50, p50Ratio := list(run.Rounds, func(x Round) float64 { return x.TotalP50ms }, base)
		hs, _ := list(run.Rounds, func(x Round) float64 { return x.HandshakeP99ms }, nil)
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", rateName(run.TargetPPS), r.label(run.variant()), cpu, cpuRatio, p50, p50Ratio, hs)
	}
	b.WriteString("\n")
}
