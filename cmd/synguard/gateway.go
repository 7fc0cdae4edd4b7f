package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/config"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/gateway"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// gatewayFlags are the flags shared by run, rules and check: the
// configuration file and the settings, each of which wins over the
// file's top-level key of the same name when given.
type gatewayFlags struct {
	config string
	s      config.Settings
}

func (f *gatewayFlags) register(fs *flag.FlagSet) {
	d := config.Defaults()
	f.s = d
	fs.StringVar(&f.config, "config", "", "read the settings from this YAML `file` (see docs/config.md); flags given as well win over its top-level keys")
	fs.Var((*serviceList)(&f.s.Protect), "protect", "services to protect, `ADDR:PORT[,ADDR:PORT...]` ([ADDR]:PORT for IPv6); repeatable; with --config, replaces the file's protect and services")
	fs.StringVar(&f.s.Mode, "mode", d.Mode, "`auto`: pass SYNs while quiet, cookies under pressure; always: cookies for every SYN; off: observe and report only")
	fs.StringVar(&f.s.Metrics, "metrics", d.Metrics, "serve Prometheus metrics on `HOST:PORT` (path /metrics)")
	fs.UintVar(&f.s.Queue, "queue", d.Queue, "first NFQUEUE `number`")
	fs.UintVar(&f.s.Queues, "queues", d.Queues, "`number` of queues and workers (spread with --queue-balance)")
	fs.BoolVar(&f.s.Local, "local", d.Local, "protect services on this host (INPUT/OUTPUT) instead of behind it (FORWARD)")
	fs.StringVar(&f.s.KeyFile, "key-file", d.KeyFile, "32-byte cookie secret `file` (mode 0600; write one with synguard keygen) shared by gateways behind ECMP; default: random per start")
	fs.StringVar(&f.s.Fail, "fail", d.Fail, "when synguard is down or its queue is full: `closed` drops new SYNs (protects the backend), open passes them (protects availability)")
	fs.StringVar(&f.s.ReplyPath, "reply-path", d.ReplyPath, "how SYN-ACKs and other replies leave: `ingress` sends each back out the interface its packet came in on, to the neighbour that sent it (fast: no route lookup, no OUTPUT/POSTROUTING rules); route routes them through the output hooks, as kernel SYNPROXY does (for asymmetric routing, or OUTPUT rules that must see them)")
	fs.StringVar(&f.s.XDP, "xdp", d.XDP, "fast path, SYNs answered and forged ACKs dropped before the stack: `auto` (native XDP where the driver has it; tc ingress on veth, where native XDP can lose SYN-ACKs, and where the driver lacks XDP; generic XDP only on kernels without tcx), native, generic, tc, or off (every packet through the queue)")
	fs.Var((*nameList)(&f.s.XDPInterfaces), "xdp-interfaces", "`IF[,IF...]`: the links clients arrive on, for XDP (default: every link that is up, has an Ethernet address and is not loopback)")
	fs.IntVar(&f.s.MaxPending, "max-pending", d.MaxPending, "bound on flows waiting for their backend")
	fs.BoolVar(&f.s.EarlyData, "early-data", d.EarlyData, "open a window of four segments in cookie SYN-ACKs and hold the client's first data in the queue until the backend's handshake is done, so the request leaves right behind the ACK; false answers with a zero window (the client waits a round trip for the window update)")
	fs.UintVar(&f.s.BackendMSS, "backend-mss", d.BackendMSS, "announce this `MSS` instead of the learned one (with --backend-wscale and --backend-sack)")
	fs.StringVar(&f.s.BackendWScale, "backend-wscale", d.BackendWScale, "announce this window `shift` (0..14, or none) instead of the learned one")
	fs.StringVar(&f.s.BackendSACK, "backend-sack", d.BackendSACK, "announce SACK support: `on` or off, instead of the learned value")
	th := &f.s.Thresholds
	fs.IntVar(&th.HalfOpenHigh, "half-open-high", d.Thresholds.HalfOpenHigh, "auto: switch a service to cookies at this many half-open connections")
	fs.IntVar(&th.HalfOpenLow, "half-open-low", d.Thresholds.HalfOpenLow, "auto: back to passthrough only at or below this many half-open connections")
	fs.Float64Var(&th.SYNRateHigh, "syn-rate-high", d.Thresholds.SYNRateHigh, "auto: switch a service to cookies at this many SYNs per second")
	fs.Float64Var(&th.SYNRateLow, "syn-rate-low", d.Thresholds.SYNRateLow, "auto: back to passthrough only at or below this many SYNs per second")
	fs.DurationVar(&th.Hold, "hold", d.Thresholds.Hold, "auto: how long a service must stay under both low watermarks before it returns to passthrough")
	fs.DurationVar(&th.HandshakeTimeout, "handshake-timeout", d.Thresholds.HandshakeTimeout, "a SYN let through counts as half-open for at most this long")
	fs.StringVar(&f.s.LogFormat, "log-format", d.LogFormat, "`json` lines, or console for humans")
	fs.StringVar(&f.s.LogLevel, "log-level", d.LogLevel, "`level`: debug, info, warn, error")
	fs.DurationVar(&f.s.StatsInterval, "stats-interval", d.StatsInterval, "log a stats event per service every `interval` (1s or more)")
	fs.StringVar(&f.s.CaptureDir, "capture-dir", d.CaptureDir, "write a pcap sample of each attack's SYNs (the first 1000, then 10 a second; 8 MiB a file) into `directory`, oldest files rotated out (256 MiB, 100 files)")
}

// source returns where the configuration comes from, once fs (with f's
// flags registered) has parsed the command line: the file, and the
// settings' flags the command line gave. Its Load reads them, and reads
// them again on a reload.
func (f *gatewayFlags) source(fs *flag.FlagSet) config.Source {
	src := config.Source{Path: f.config, Flags: f.s}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name != "config" && fl.Name != "cpuprofile" {
			src.Set = append(src.Set, fl.Name)
		}
	})
	return src
}

// load loads src for a command: any mistake in it is a usage error,
// reported in one line with exit status 2.
func load(src config.Source) (config.Config, error) {
	cfg, err := src.Load()
	if err != nil {
		return config.Config{}, usagef("%v", err)
	}
	return cfg, nil
}

// serviceList is a repeatable, comma-separated list of services.
type serviceList []netip.AddrPort

func (l *serviceList) String() string {
	parts := make([]string, len(*l))
	for i, s := range *l {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}

func (l *serviceList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		ap, err := config.ParseService(part)
		if err != nil {
			return err
		}
		*l = append(*l, ap)
	}
	return nil
}

// nameList is a comma-separated list of interface names; empty means
// none.
type nameList []string

func (l *nameList) String() string { return strings.Join(*l, ",") }

func (l *nameList) Set(v string) error {
	if v == "" {
		*l = nil
		return nil
	}
	names, err := xdp.ParseInterfaces(v)
	if err != nil {
		return err
	}
	*l = names
	return nil
}

// newLogger builds the event logger cfg asks for, writing to w, and the
// rate limit its lines pass.
func newLogger(w io.Writer, cfg config.Config) (zerolog.Logger, *telemetry.LineLimiter) {
	return telemetry.NewLogger(w, cfg.LogFormat, cfg.LogLevel, telemetry.LimitConfig{})
}

func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f gatewayFlags
	fs := newFlagSet(stdout, "run")
	f.register(fs)
	// --cpuprofile FILE is a development aid (profiling the packet path
	// under a flood), registered only when given so that -h does not list it.
	var cpuProfile string
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(strings.TrimLeft(a, "-"), "cpuprofile") }) {
		fs.StringVar(&cpuProfile, "cpuprofile", "", "")
	}
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	// src.Load reads the file again, with the same flags over it.
	src := f.source(fs)
	cfg, err := load(src)
	if err != nil {
		return err
	}
	gw := cfg.Gateway
	gw.Logger, gw.LogLimiter = newLogger(stdout, cfg)
	// SIGHUP reloads the file; without one it would end the process, so
	// it is caught either way.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go forwardReloads(ctx, hup, reload)
	gw.Reload = reload
	gw.Load = func() (gateway.Config, error) { return reloadable(src, cfg) }
	if cpuProfile != "" {
		pf, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	return gateway.Run(ctx, gw)
}

// forwardReloads turns SIGHUPs into reload requests until ctx is done; a
// request still pending absorbs the next.
func forwardReloads(ctx context.Context, hup <-chan os.Signal, reload chan<- struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}
}

// reloadable reads the configuration again for a reload. Only services
// and their settings can change while synguard runs: a change to anything
// else is an error naming the keys, so nothing is silently left as it was.
func reloadable(src config.Source, running config.Config) (gateway.Config, error) {
	if src.Path == "" {
		return gateway.Config{}, errors.New("nothing to reload: synguard was started without --config")
	}
	next, err := src.Load()
	if err != nil {
		return gateway.Config{}, err
	}
	if keys := config.RestartNeeded(running, next); len(keys) > 0 {
		return gateway.Config{}, fmt.Errorf("%s: changing %s needs a restart", src.Path, strings.Join(keys, ", "))
	}
	return next.Gateway, nil
}

// loadCommand parses a command's gateway flags and loads the
// configuration they name, as run does.
func loadCommand(name string, args []string, stdout io.Writer) (config.Config, error) {
	var f gatewayFlags
	fs := newFlagSet(stdout, name)
	f.register(fs)
	if err := parseArgs(fs, args); err != nil {
		return config.Config{}, err
	}
	return load(f.source(fs))
}

func printRules(args []string, stdout, stderr io.Writer) error {
	cfg, err := loadCommand("rules", args, stdout)
	if err != nil {
		return err
	}
	gw := cfg.Gateway
	gw.ResolveReopenWithin()
	rs, err := firewall.Rules(gw.FirewallConfig())
	if err != nil {
		return usagef("%v", err)
	}
	_, err = rs.WriteTo(stdout)
	return err
}
