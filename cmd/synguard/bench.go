package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/synguard/synguard/bench"
	"github.com/synguard/synguard/lab"
)

// benchLabName prefixes the namespaces of the benchmark's lab.
const benchLabName = "sgbench"

func runBenchScenarios(ctx context.Context, args []string, stdout, _ io.Writer) error {
	cfg, err := benchConfig(args, stdout)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("bench: needs root (network namespaces, netfilter)")
	}
	sysDesc := fmt.Sprint(systemNames(cfg.Systems))
	if len(cfg.Systems) == 0 || slices.ContainsFunc(cfg.Systems, bench.System.IsSynguard) {
		sysDesc += " (synguard --queues " + queuesString(cfg.Queues) + strings.Join(append([]string{""}, cfg.SynguardArgs...), " ") + ")"
	}
	labDesc := cfg.Name
	if cfg.Family == bench.IPv6 {
		labDesc += " (IPv6)"
	}
	if cfg.ClientRTT > 0 {
		labDesc += ", clients " + cfg.ClientRTT.String() + " away"
	}
	rounds := ""
	if cfg.Rounds > 1 {
		rounds = fmt.Sprintf(" × %d rounds", cfg.Rounds)
	}
	fmt.Fprintf(stdout, "bench: lab %s, %s flood, rates %s, %s per flood%s, systems %s; writing to %s\n",
		labDesc, cfg.Attack, ratesString(cfg.Rates), cfg.Duration, rounds, sysDesc, cfg.OutDir)
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		if rep != nil {
			fmt.Fprintf(stdout, "partial report of the runs done: %s\n", filepath.Join(cfg.OutDir, bench.ReportMD))
		}
		return err
	}
	fmt.Fprintln(stdout)
	if err := rep.TableMarkdown(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nreport: %s\n", filepath.Join(cfg.OutDir, bench.ReportMD))
	return nil
}

// benchConfig reads `synguard bench`'s flags into a checked benchmark
// configuration that reports progress to stdout; -h prints the usage to
// stdout and is flag.ErrHelp.
func benchConfig(args []string, stdout io.Writer) (bench.Config, error) {
	fs := newFlagSet(stdout, "bench")
	quick := fs.Bool("quick", false, "a short run: rates "+ratesString(bench.QuickRates)+", "+bench.QuickDuration.String()+" each (about 2 minutes; each --queues count beyond the first adds about 40 s)")
	out := fs.String("out", "bench-out", "output `directory`")
	attack := fs.String("attack", "syn", "what the flood sends: `syn` (SYNs) or ack (forged ACKs: the ACK flag alone, random sequence and acknowledgement numbers)")
	rates := fs.String("rates", "", "offered loads in packets (SYNs or forged ACKs) per second, comma-separated; max = as fast as the generator goes (default "+ratesString(bench.DefaultRates)+")")
	duration := fs.Duration("duration", 0, "how long each flood lasts (default "+bench.DefaultDuration.String()+", "+bench.QuickDuration.String()+" with --quick)")
	systems := fs.String("systems", "", "systems to compare, comma-separated (default synguard,synguard-nfqueue,synproxy,none; synguard-nfqueue is synguard with --xdp off)")
	queues := fs.String("queues", "1", "synguard's NFQUEUE `counts`, comma-separated: synguard and synguard-nfqueue are each measured once per count at every rate, their queues spread with --queue-balance")
	probeRate := fs.Int("probe-rate", bench.DefaultProbeRate, "`number` of legitimate clients per second during each flood")
	probeTimeout := fs.Duration("probe-timeout", bench.DefaultProbeTimeout, "time a legitimate client has to connect and fetch its page")
	name := fs.String("name", benchLabName, "namespace name `prefix` of the benchmark's lab")
	synguardArgs := fs.String("synguard-args", "", "more `arguments` for synguard run, space-separated, e.g. \"--reply-path route\" (default: none, its defaults)")
	ipv6 := fs.Bool("ipv6", false, "run everything over IPv6: service [2001:db8:b::2]:80, flood from 2001:db8:ff00::/40, ip6tables on the gateway")
	rounds := fs.Int("rounds", bench.DefaultRounds, "`number` of rounds: each rate is measured that many times, the baseline and the systems in turn (in the opposite order every other round), and pooled; the report shows each round too (1 with --quick unless given)")
	clientRTT := fs.Duration("client-rtt", 0, "put the legitimate clients this round trip away, behind a delay relay (the flood keeps its direct path), measure every system without a flood too, and report the time to first byte (e.g. 20ms; default: next to the gateway)")
	serverFirst := fs.Bool("server-first", true, "after the floods, measure every system once more without a flood with clients of a protocol whose server speaks first (SMTP, SSH): each waits for the backend's greeting, which comes only once the backend took the gateway's ACK")
	if err := parseArgs(fs, args); err != nil {
		return bench.Config{}, err
	}
	cfg := bench.Config{
		Name:         *name,
		Rates:        bench.DefaultRates,
		Duration:     bench.DefaultDuration,
		ProbeRate:    *probeRate,
		ProbeTimeout: *probeTimeout,
		OutDir:       *out,
		Progress:     stdout,
		Family:       bench.IPv4,
		ClientRTT:    *clientRTT,
		ServerFirst:  *serverFirst,
	}
	if *ipv6 {
		cfg.Family = bench.IPv6
	}
	var err error
	if cfg.Attack, err = parseAttack(*attack); err != nil {
		return cfg, usagef("bench --attack: %v", err)
	}
	cfg.SynguardArgs = strings.Fields(*synguardArgs)
	cfg.Rounds = *rounds
	if *quick {
		cfg.Rates, cfg.Duration, cfg.MaxAttempts = bench.QuickRates, bench.QuickDuration, bench.QuickMaxAttempts
		if !flagGiven(fs, "rounds") {
			cfg.Rounds = 1
		}
	}
	if cfg.Rounds < 1 {
		return cfg, usagef("bench --rounds: %d, want 1..%d", cfg.Rounds, bench.MaxRounds)
	}
	if *rates != "" {
		r, err := parseRates(*rates)
		if err != nil {
			return cfg, usagef("bench --rates: %v", err)
		}
		cfg.Rates = r
	}
	if *duration != 0 {
		cfg.Duration = *duration
	}
	if *systems != "" {
		for _, s := range strings.Split(*systems, ",") {
			sys, err := bench.ParseSystem(strings.TrimSpace(s))
			if err != nil {
				return cfg, usagef("bench --systems: %v", err)
			}
			cfg.Systems = append(cfg.Systems, sys)
		}
	}
	q, err := parseQueues(*queues)
	if err != nil {
		return cfg, usagef("bench --queues: %v", err)
	}
	cfg.Queues = q
	if cfg.Binary, err = os.Executable(); err != nil {
		return cfg, fmt.Errorf("bench: find synguard executable: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usagef("%v", err)
	}
	return cfg, nil
}

func runBenchReport(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "bench report")
	in := fs.String("in", "", "recorded report.json `file`")
	out := fs.String("out", "", "output `directory` (default: the directory of --in)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *in == "" {
		return usagef("bench report: --in is required")
	}
	if *out == "" {
		*out = filepath.Dir(*in)
	}
	rep, err := bench.LoadReport(*in)
	if err != nil {
		return err
	}
	if err := rep.Write(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "report: %s\n", filepath.Join(*out, bench.ReportMD))
	return nil
}

// parseAttack reads --attack and bench flood's --kind: syn or ack, and
// nothing else (not even empty).
func parseAttack(s string) (bench.Kind, error) {
	if s == "" {
		return "", errors.New(`"": want syn or ack`)
	}
	k, err := bench.ParseKind(s)
	if err != nil {
		return "", fmt.Errorf("%q: want syn or ack", s)
	}
	return k, nil
}

// parseRates reads "10000,50000,max".
func parseRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "max" {
			rates = append(rates, 0)
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 1 || n > bench.MaxFloodRate {
			return nil, fmt.Errorf("%q: want 1..%d packets/s or max", f, bench.MaxFloodRate)
		}
		rates = append(rates, n)
	}
	return rates, nil
}

// parseQueues reads "1,2,4": synguard's queue counts. Repeats are left to
// bench.Config.Validate.
func parseQueues(s string) ([]int, error) {
	var queues []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > bench.MaxQueues {
			return nil, fmt.Errorf("%q: want queue counts 1..%d, comma-separated", f, bench.MaxQueues)
		}
		queues = append(queues, n)
	}
	return queues, nil
}

func queuesString(queues []int) string {
	parts := make([]string, len(queues))
	for i, q := range queues {
		parts[i] = strconv.Itoa(q)
	}
	return strings.Join(parts, ",")
}

func ratesString(rates []int) string {
	parts := make([]string, len(rates))
	for i, r := range rates {
		parts[i] = "max"
		if r > 0 {
			parts[i] = strconv.Itoa(r)
		}
	}
	return strings.Join(parts, ",")
}

func systemNames(ss []bench.System) []string {
	if len(ss) == 0 {
		ss = bench.AllSystems
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

func runBenchFlood(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "bench flood")
	kind := fs.String("kind", "syn", "what to send: `syn` (Linux-like SYNs) or ack (forged ACKs)")
	target := fs.String("target", "", "`ADDR:PORT` to flood")
	sources := fs.String("sources", "", "source `prefix` (default: the benchmarking range of the target's family)")
	rate := fs.Int("rate", 10000, "packets per second (0: as fast as possible)")
	count := fs.Int("count", 100000, "total `packets`")
	duration := fs.Duration("duration", 10*time.Second, "maximum `duration`")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	k, err := parseAttack(*kind)
	if err != nil {
		return usagef("bench flood --kind: %v", err)
	}
	t, err := netip.ParseAddrPort(*target)
	if err != nil {
		return usagef("bench flood --target %q: want ADDR:PORT", *target)
	}
	cfg := bench.FloodConfig{Kind: k, Target: t, Rate: *rate, Count: *count, Duration: *duration}
	switch {
	case *sources != "":
		p, err := netip.ParsePrefix(*sources)
		if err != nil {
			return usagef("bench flood --sources %q: want a prefix", *sources)
		}
		cfg.Sources = p
	case t.Addr().Is4():
		cfg.Sources = lab.SpoofPrefix4
	default:
		cfg.Sources = lab.SpoofPrefix6
	}
	st, err := bench.Flood(ctx, cfg)
	if err != nil {
		return err
	}
	what := "SYNs"
	if k == bench.KindACK {
		what = "forged ACKs"
	}
	fmt.Fprintf(stdout, "sent %d %s in %s (%.0f/s), %d errors\n", st.Sent, what, st.Elapsed.Round(time.Millisecond), float64(st.Sent)/st.Elapsed.Seconds(), st.Errors)
	return nil
}

// flagGiven reports whether the command line set the flag name.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}
