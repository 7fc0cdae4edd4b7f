package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

// System names a protection set-up the benchmark compares.
type System string

// The systems, in the order they run and are reported.
const (
	// Synguard is `synguard run --mode always` on the gateway, with its
	// defaults: the fast path on where it is available (--xdp auto, the
	// tc program on the lab's veth links).
	Synguard System = "synguard"
	// SynguardNFQueue is `synguard run --mode always --xdp off`: every
	// packet through the NFQUEUE path, as synguard was before XDP.
	SynguardNFQueue System = "synguard-nfqueue"
	// Synproxy is the kernel's SYNPROXY target on the gateway, set up as
	// the iptables-extensions manual prescribes.
	Synproxy System = "synproxy"
	// None is plain forwarding: the backend defends itself with the
	// kernel's own SYN cookies (net.ipv4.tcp_syncookies=1, the default).
	None System = "none"
)

// AllSystems lists every system.
var AllSystems = []System{Synguard, SynguardNFQueue, Synproxy, None}

// ParseSystem checks a system name.
func ParseSystem(s string) (System, error) {
	for _, sys := range AllSystems {
		if string(sys) == s {
			return sys, nil
		}
	}
	return "", fmt.Errorf("unknown system %q (want synguard, synguard-nfqueue, synproxy or none)", s)
}

// IsSynguard says whether s is synguard, with or without its XDP fast
// path: a process of its own with NFQUEUEs, metrics and an RSS, measured
// once per queue count.
func (s System) IsSynguard() bool { return s == Synguard || s == SynguardNFQueue }

// The paths by which a run's flood was handled (RunResult.Path).
const (
	// PathXDP: synguard answered the SYN flood (or dropped the forged
	// ACKs) in its XDP program.
	PathXDP = "xdp"
	// PathTC: it did so in its tc program, the same code at tc ingress
	// (--xdp tc, and --xdp auto on veth and drivers without native XDP).
	PathTC = "tc"
	// PathNFQueue: synguard did it through its NFQUEUE path.
	PathNFQueue = "nfqueue"
	// PathKernel: the kernel did, without synguard (synproxy, none and
	// the baselines).
	PathKernel = "kernel"
)

// setup is one system (or the baseline) installed on the gateway for one
// run.
type setup interface {
	// start installs it; stop removes it and must undo a partial start.
	start(ctx context.Context) error
	stop(ctx context.Context) error
	// before and after bracket the measured window.
	before(ctx context.Context) error
	after(ctx context.Context, m *measurement) error
}

// iptables runs one iptables (or ip6tables: tool) command in ns, waiting
// for the xtables lock.
func iptables(ctx context.Context, ns *netns.NS, tool string, args ...string) error {
	return ns.Run(ctx, tool, append([]string{"-w"}, args...)...)
}

// ruleSet is iptables rules added in order by start and deleted in
// reverse by stop; the gateway-side set-ups are made of these.
type ruleSet struct {
	ns *netns.NS
	// iptables is the tool that installs the rules: iptables or
	// ip6tables.
	iptables string
	rules    [][]string // each: table, chain, match and target
	added    int
	// sysctls are set in ns at start and put back at stop.
	sysctls [][2]string
	saved   []string
}

func (r *ruleSet) start(ctx context.Context) error {
	for _, s := range r.sysctls {
		old, err := r.ns.Output(ctx, "sysctl", "-n", s[0])
		if err != nil {
			return err
		}
		r.saved = append(r.saved, strings.TrimSpace(old))
		if err := r.ns.Run(ctx, "sysctl", "-qw", s[0]+"="+s[1]); err != nil {
			return err
		}
	}
	for _, rule := range r.rules {
		if err := iptables(ctx, r.ns, r.iptables, append([]string{"-t", rule[0], "-A"}, rule[1:]...)...); err != nil {
			return err
		}
		r.added++
	}
	return nil
}

func (r *ruleSet) stop(ctx context.Context) error {
	var errs []error
	for ; r.added > 0; r.added-- {
		rule := r.rules[r.added-1]
		if err := iptables(ctx, r.ns, r.iptables, append([]string{"-t", rule[0], "-D"}, rule[1:]...)...); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(r.saved) - 1; i >= 0; i-- {
		if err := r.ns.Run(ctx, "sysctl", "-qw", r.sysctls[i][0]+"="+r.saved[i]); err != nil {
			errs = append(errs, err)
		}
	}
	r.saved = r.saved[:0]
	return errors.Join(errs...)
}

func (r *ruleSet) before(context.Context) error              { return nil }
func (r *ruleSet) after(context.Context, *measurement) error { return nil }

// baselineRules drop the flood in raw PREROUTING, the gateway's first
// netfilter hook: what is left is the cost of generating the flood and
// delivering it to the gateway, which every system pays too. Legitimate
// clients are not spoofed and pass. The rule matches the attack's packets:
// SYNs, or segments with the ACK flag alone.
func baselineRules(ns *netns.NS, fam netFamily, service netip.AddrPort, attack Kind) *ruleSet {
	return &ruleSet{ns: ns, iptables: fam.iptables, rules: [][]string{
		append(append([]string{"raw", "PREROUTING", "-s", fam.spoof.String(), "-d", service.Addr().String(),
			"-p", "tcp"}, floodMatch(attack)...), "-j", "DROP"),
	}}
}

// floodMatch is the iptables match of the flood's packets: --syn, or the
// ACK flag alone among SYN, ACK, RST and FIN.
func floodMatch(attack Kind) []string {
	if attack == KindACK {
		return []string{"--tcp-flags", "SYN,ACK,RST,FIN", "ACK"}
	}
	return []string{"--syn"}
}

// BackendOptions are the TCP options a backend announces in its SYN-ACK,
// which SYNPROXY must be told.
type BackendOptions struct {
	MSS         uint16 `json:"mss"`
	WindowScale uint8  `json:"wscale"`
}

// synproxyRules is kernel SYNPROXY in front of service, as the
// iptables-extensions manual (SYNPROXY target) prescribes, with INPUT
// replaced by FORWARD because the gateway protects a service behind it:
//
//   - nf_conntrack_tcp_loose=0, so the client's handshake ACK is INVALID
//     rather than picked up as a new flow;
//   - SYNs to the service are made untracked in raw PREROUTING;
//   - UNTRACKED (the SYNs) and INVALID (the handshake ACKs) go to SYNPROXY,
//     with the backend's MSS and window scale, SACK and timestamps;
//   - the remaining INVALID packets are dropped.
//
// The nftables wiki adds tcp_syncookies=1 and tcp_timestamps=1 (SYNPROXY's
// cookies carry the options in the timestamp); both are the defaults and
// are set explicitly. The conntrack table size is not raised: SYNPROXY
// creates entries only for validated clients, and nf_conntrack_max is not
// a per-namespace setting. Over IPv6 the same rules go through ip6tables;
// the sysctls are the same, since the net.ipv4.tcp_* ones govern IPv6's
// TCP too.
func synproxyRules(ns *netns.NS, fam netFamily, service netip.AddrPort, opt BackendOptions) *ruleSet {
	match := []string{"-i", lab.GatewayClientIface, "-p", "tcp", "-d", service.Addr().String(),
		"--dport", strconv.Itoa(int(service.Port()))}
	rule := func(table, chain string, rest ...string) []string {
		return append(append([]string{table, chain}, match...), rest...)
	}
	return &ruleSet{
		ns:       ns,
		iptables: fam.iptables,
		sysctls: [][2]string{
			{"net.netfilter.nf_conntrack_tcp_loose", "0"},
			{"net.ipv4.tcp_syncookies", "1"},
			{"net.ipv4.tcp_timestamps", "1"},
		},
		rules: [][]string{
			rule("raw", "PREROUTING", "--syn", "-j", "CT", "--notrack"),
			rule("filter", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID,UNTRACKED",
				"-j", "SYNPROXY", "--sack-perm", "--timestamp",
				"--wscale", strconv.Itoa(int(opt.WindowScale)), "--mss", strconv.Itoa(int(opt.MSS))),
			rule("filter", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"),
		},
	}
}

// noneSetup is no protection at all.
type noneSetup struct{}

func (noneSetup) start(context.Context) error               { return nil }
func (noneSetup) stop(context.Context) error                { return nil }
func (noneSetup) before(context.Context) error              { return nil }
func (noneSetup) after(context.Context, *measurement) error { return nil }

// metricsAddr is where the benchmarked synguard serves metrics, inside the
// gateway namespace.
const metricsAddr = "127.0.0.1:9847"

// synguardSetup runs `synguard run --mode always --queues N` in the
// gateway namespace, a fresh process per run so that its peak RSS is the
// run's: with its XDP fast path as it defaults to (Synguard) or with
// --xdp off (SynguardNFQueue).
type synguardSetup struct {
	ns      *netns.NS
	binary  string
	service netip.AddrPort
	queues  int      // NFQUEUEs, one worker each (1 when 0)
	xdpOff  bool     // --xdp off
	attack  Kind     // what the flood sends, for the run's path
	args    []string // more arguments for `synguard run`
	logPath string

	cmd  *exec.Cmd
	done chan error
	log  *os.File

	m0   metricsSample
	cpu0 time.Duration
	// fast is the path the fast path takes, PathXDP or PathTC, by the
	// kind of BPF links the process holds.
	fast string
}

// metricsSample is what one scrape of synguard's metrics gives the
// benchmark.
type metricsSample struct {
	total map[string]float64 // every metric, summed over its labels
	queue map[int]float64    // synguard_queue_received_total by queue
	xdp   map[string]float64 // synguard_xdp_packets_total by action
}

// runArgs are the arguments of `synguard run`: the benchmark's own, then
// the user's (Config.SynguardArgs). For --xdp off the user's XDP flags are
// left out, since synguard refuses --xdp-interfaces with XDP off and
// synguard-nfqueue must not run with XDP on.
func (s *synguardSetup) runArgs() []string {
	args := []string{"run", "--protect", s.service.String(),
		"--mode", "always", "--queues", strconv.Itoa(max(s.queues, 1)),
		"--metrics", metricsAddr, "--log-level", "warn"}
	if !s.xdpOff {
		return append(args, s.args...)
	}
	return append(append(args, withoutXDPFlags(s.args)...), "--xdp", "off")
}

// withoutXDPFlags returns args without --xdp and --xdp-interfaces (one or
// two dashes, "=value" or the value as the next argument).
func withoutXDPFlags(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") || (name != "xdp" && name != "xdp-interfaces") {
			out = append(out, args[i])
			continue
		}
		if !hasValue {
			i++ // the value
		}
	}
	return out
}

func (s *synguardSetup) start(ctx context.Context) error {
	log, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	s.log = log
	s.cmd = s.ns.Command(context.WithoutCancel(ctx), s.binary, s.runArgs()...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start synguard: %w", err)
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.cmd.Wait() }()

	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := s.scrape(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("synguard not ready after 15s (log %s): %w", s.logPath, err)
		}
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("synguard exited at start (log %s): %v", s.logPath, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	// `ip netns exec` execs the command in place, so the child's PID is
	// synguard's; check, since RSS and CPU are read through it.
	comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(s.cmd.Process.Pid), "comm"))
	if err != nil {
		return fmt.Errorf("synguard process: %w", err)
	}
	if got, want := strings.TrimSpace(string(comm)), filepath.Base(s.binary); !strings.HasPrefix(want, got) {
		return fmt.Errorf("process %d is %q, not %q", s.cmd.Process.Pid, got, want)
	}
	types, err := linkTypes(s.cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("synguard's fast path: %w", err)
	}
	s.fast = fastPath(types)
	return nil
}

// fastPath names the path of a synguard whose BPF links are of types
// (their count by /proc/PID/fdinfo's link_type): tc when all of them are
// tcx links, xdp otherwise.
func fastPath(types map[string]int) string {
	if types["tcx"] > 0 && len(types) == 1 {
		return PathTC
	}
	return PathXDP
}

// linkTypes counts the BPF links process pid holds by their type.
func linkTypes(pid int) (map[string]int, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return nil, err
	}
	types := make(map[string]int)
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join(dir, "fd", fd.Name())); target != "anon_inode:bpf_link" {
			continue
		}
		info, err := os.ReadFile(filepath.Join(dir, "fdinfo", fd.Name()))
		if err != nil {
			return nil, err
		}
		types[fdinfoLinkType(string(info))]++
	}
	return types, nil
}

// fdinfoLinkType reads the link_type line of a BPF link's fdinfo.
func fdinfoLinkType(info string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, "link_type:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// scrape reads synguard's metrics: each metric summed over its labels,
// the packets each queue received and the XDP program's verdicts.
func (s *synguardSetup) scrape(ctx context.Context) (metricsSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	text, err := lab.ScrapeMetricsText(ctx, s.ns, metricsAddr)
	if err != nil {
		return metricsSample{}, err
	}
	var m metricsSample
	if m.total, err = lab.ParseMetrics(strings.NewReader(text)); err != nil {
		return m, err
	}
	if m.queue, err = perQueue(text, "synguard_queue_received_total"); err != nil {
		return m, err
	}
	m.xdp, err = perLabel(text, "synguard_xdp_packets_total", "action")
	return m, err
}

// perQueue reads one metric's series by their queue label from a
// Prometheus text exposition: `name{queue="N"} value`.
func perQueue(text, name string) (map[int]float64, error) {
	byLabel, err := perLabel(text, name, "queue")
	if err != nil {
		return nil, err
	}
	out := make(map[int]float64, len(byLabel))
	for q, v := range byLabel {
		n, err := strconv.Atoi(q)
		if err != nil {
			return nil, fmt.Errorf("bad queue label %q in %s", q, name)
		}
		out[n] += v
	}
	return out, nil
}

// perLabel reads one metric's series by the value of one label from a
// Prometheus text exposition: `name{label="V",...} value`, summed over
// the other labels. Series without the label are left out.
func perLabel(text, name, label string) (map[string]float64, error) {
	out := make(map[string]float64)
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "}")
		if !ok {
			return nil, fmt.Errorf("bad metrics line %q", strings.TrimSpace(line))
		}
		var l string
		if strings.HasPrefix(labels, label+`="`) {
			l = labels[len(label)+2:]
		} else if _, after, found := strings.Cut(labels, ","+label+`="`); found {
			l = after
		} else {
			continue
		}
		l, _, _ = strings.Cut(l, `"`)
		valStr, _, _ := strings.Cut(strings.TrimSpace(value), " ")
		v, err := strconv.ParseFloat(valStr, 64)
		if err != nil {
			return nil, fmt.Errorf("bad metrics value in %q: %w", strings.TrimSpace(line), err)
		}
		out[l] += v
	}
	return out, nil
}

func (s *synguardSetup) before(ctx context.Context) error {
	var err error
	if s.m0, err = s.scrape(ctx); err != nil {
		return fmt.Errorf("synguard metrics: %w", err)
	}
	s.cpu0, err = ProcessCPU(s.cmd.Process.Pid)
	return err
}

func (s *synguardSetup) after(ctx context.Context, m *measurement) error {
	cpu1, err := ProcessCPU(s.cmd.Process.Pid)
	if err != nil {
		return err
	}
	m.processCPU = cpu1 - s.cpu0
	if m.peakRSS, err = PeakRSS(s.cmd.Process.Pid); err != nil {
		return err
	}
	m1, err := s.scrape(ctx)
	if err != nil {
		return fmt.Errorf("synguard metrics: %w", err)
	}
	delta := func(name string) uint64 { return uint64(max(m1.total[name]-s.m0.total[name], 0)) }
	m.queueDrops = delta("synguard_queue_dropped_total")
	m.engineSYNs = delta("synguard_syn_received_total")
	m.cookieInvalid = delta("synguard_cookie_invalid_total")
	// synguard binds SYN queues 0..N-1 (--queue 0, the default) and
	// completion queues N..2N-1, where forged ACKs go: the flood's.
	n := max(s.queues, 1)
	first := 0
	if s.attack == KindACK {
		first = n
	}
	m.queueReceived = make([]uint64, n)
	for q := range m.queueReceived {
		m.queueReceived[q] = uint64(max(m1.queue[first+q]-s.m0.queue[first+q], 0))
	}
	xdp := func(action string) uint64 { return uint64(max(m1.xdp[action]-s.m0.xdp[action], 0)) }
	m.xdpTX, m.xdpDrop, m.xdpPass = xdp("tx"), xdp("drop"), xdp("pass")
	m.path = runPath(s.attack, m.xdpTX, m.xdpDrop, s.fast)
	return nil
}

// runPath is the path by which synguard handled a flood, from its fast
// path's verdicts over the run: the SYN flood was answered there (fast,
// PathXDP or PathTC) if the program sent SYN-ACKs (tx), the forged ACKs
// were dropped there if it dropped packets. The other verdict does not
// count: during an ACK flood the legitimate clients' SYNs are answered
// there whatever happens to the flood.
func runPath(attack Kind, tx, drop uint64, fast string) string {
	if (attack == KindACK && drop > 0) || (attack != KindACK && tx > 0) {
		return fast
	}
	return PathNFQueue
}

// stop sends SIGTERM, so that synguard removes its rules and restores
// its sysctls, and kills it if it has not gone in 10 s.
func (s *synguardSetup) stop(context.Context) error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	defer s.log.Close()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			return fmt.Errorf("synguard exit (log %s): %w", s.logPath, err)
		}
		return nil
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("synguard did not stop on SIGTERM (log %s)", s.logPath)
	}
}

// learnBackendOptions reads the options the backend announces, the way the
// SYNPROXY manual says to: connect once from the client side and look at
// the backend's SYN-ACK, here captured on the gateway's backend-side
// interface.
func learnBackendOptions(ctx context.Context, t *lab.Topology, service netip.AddrPort) (BackendOptions, error) {
	c, err := lab.OpenCapture(t.Gateway, t.GatewayBackendSide)
	if err != nil {
		return BackendOptions{}, err
	}
	defer c.Close()
	r := lab.Probe(ctx, t.Client, service, 5*time.Second)
	if !r.OK {
		return BackendOptions{}, fmt.Errorf("learn backend options: %w", r.Err)
	}
	buf := make([]byte, 2048)
	var p packet.Packet
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := c.Read(buf, 200*time.Millisecond)
		if errors.Is(err, lab.ErrCaptureTimeout) {
			continue
		}
		if err != nil {
			return BackendOptions{}, err
		}
		if packet.Parse(buf[:n], &p) != nil || p.Flags&(packet.SYN|packet.ACK) != packet.SYN|packet.ACK ||
			p.Source() != service {
			continue
		}
		if !p.Options.HasMSS {
			return BackendOptions{}, errors.New("learn backend options: SYN-ACK without MSS")
		}
		o := BackendOptions{MSS: p.Options.MSS}
		if p.Options.HasWindowScale {
			o.WindowScale = p.Options.WindowScale
		}
		return o, nil
	}
	return BackendOptions{}, errors.New("learn backend options: no SYN-ACK from the backend captured")
}

// logf writes a progress line when w is set.
func logf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format, args...)
	}
}
