package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/gateway"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// gatewayFlags are the flags shared by run and rules.
type gatewayFlags struct {
	protect     serviceList
	mode        string
	metrics     string
	queue       uint
	queues      uint
	local       bool
	keyFile     string
	fail        string
	replyPath   string
	xdp         string
	xdpIfaces   string
	maxPending  int
	backendMSS  uint
	backendWS   string
	backendSACK string
	logFormat   string
	logLevel    string
	statsEvery  time.Duration
	thresholds  engine.Thresholds
}

func (f *gatewayFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.protect, "protect", "services to protect, `ADDR:PORT[,ADDR:PORT...]` ([ADDR]:PORT for IPv6); repeatable")
	fs.StringVar(&f.mode, "mode", "auto", "`auto`: pass SYNs while quiet, cookies under pressure; always: cookies for every SYN; off: observe and report only")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics on `HOST:PORT` (path /metrics)")
	fs.UintVar(&f.queue, "queue", 0, "first NFQUEUE `number`")
	fs.UintVar(&f.queues, "queues", 1, "`number` of queues and workers (spread with --queue-balance)")
	fs.BoolVar(&f.local, "local", false, "protect services on this host (INPUT/OUTPUT) instead of behind it (FORWARD)")
	fs.StringVar(&f.keyFile, "key-file", "", "32-byte cookie secret `file` (mode 0600) shared by gateways behind ECMP; default: random per start")
	fs.StringVar(&f.fail, "fail", "closed", "when synguard is down or its queue is full: `closed` drops new SYNs (protects the backend), open passes them (protects availability)")
	fs.StringVar(&f.replyPath, "reply-path", "ingress", "how SYN-ACKs and other replies leave: `ingress` sends each back out the interface its packet came in on, to the neighbour that sent it (fast: no route lookup, no OUTPUT/POSTROUTING rules); route routes them through the output hooks, as kernel SYNPROXY does (for asymmetric routing, or OUTPUT rules that must see them)")
	fs.StringVar(&f.xdp, "xdp", "auto", "fast path, SYNs answered and forged ACKs dropped before the stack: `auto` (native XDP where the driver has it; tc ingress on veth, where native XDP can lose SYN-ACKs, and where the driver lacks XDP; generic XDP only on kernels without tcx), native, generic, tc, or off (every packet through the queue)")
	fs.StringVar(&f.xdpIfaces, "xdp-interfaces", "", "`IF[,IF...]`: the links clients arrive on, for XDP (default: every link that is up, has an Ethernet address and is not loopback)")
	fs.IntVar(&f.maxPending, "max-pending", engine.DefaultMaxPending, "bound on flows waiting for their backend")
	fs.UintVar(&f.backendMSS, "backend-mss", 0, "announce this MSS instead of the learned one (with --backend-wscale and --backend-sack)")
	fs.StringVar(&f.backendWS, "backend-wscale", "", "announce this window `shift` (0..14, or none) instead of the learned one")
	fs.StringVar(&f.backendSACK, "backend-sack", "", "announce SACK support: on or off, instead of the learned value")
	th := engine.DefaultThresholds
	fs.IntVar(&f.thresholds.HalfOpenHigh, "half-open-high", th.HalfOpenHigh, "auto: switch a service to cookies at this many half-open connections")
	fs.IntVar(&f.thresholds.HalfOpenLow, "half-open-low", th.HalfOpenLow, "auto: back to passthrough only at or below this many half-open connections")
	fs.Float64Var(&f.thresholds.SYNRateHigh, "syn-rate-high", th.SYNRateHigh, "auto: switch a service to cookies at this many SYNs per second")
	fs.Float64Var(&f.thresholds.SYNRateLow, "syn-rate-low", th.SYNRateLow, "auto: back to passthrough only at or below this many SYNs per second")
	fs.DurationVar(&f.thresholds.Hold, "hold", th.Hold, "auto: how long a service must stay under both low watermarks before it returns to passthrough")
	fs.DurationVar(&f.thresholds.HandshakeTimeout, "handshake-timeout", th.HandshakeTimeout, "a SYN let through counts as half-open for at most this long")
	fs.StringVar(&f.logFormat, "log-format", "json", "`json` lines, or console for humans")
	fs.StringVar(&f.logLevel, "log-level", "info", "`level`: debug, info, warn, error")
	fs.DurationVar(&f.statsEvery, "stats-interval", telemetry.DefaultStatsInterval, "log a stats event per service every `interval` (1s or more)")
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
		ap, err := netip.ParseAddrPort(part)
		if err != nil {
			return fmt.Errorf("%q is not ADDR:PORT ([ADDR]:PORT for IPv6)", part)
		}
		if ap.Port() == 0 {
			return fmt.Errorf("%q: port 0", part)
		}
		if ap.Addr().IsUnspecified() {
			return fmt.Errorf("%q: give the service's own address, not a wildcard", part)
		}
		if ap.Addr().Zone() != "" {
			return fmt.Errorf("%q: zoned addresses are not supported", part)
		}
		*l = append(*l, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return nil
}

// config validates the flags into a gateway configuration.
func (f *gatewayFlags) config() (gateway.Config, error) {
	if len(f.protect) == 0 {
		return gateway.Config{}, usagef("--protect is required")
	}
	mode, err := engine.ParseMode(f.mode)
	if err != nil {
		return gateway.Config{}, usagef("--mode: %v", err)
	}
	if err := f.thresholds.Validate(); err != nil {
		return gateway.Config{}, usagef("%v", err)
	}
	if f.queues == 0 || f.queue > 65535 || f.queue+f.queues-1 > 65535 {
		return gateway.Config{}, usagef("--queue %d --queues %d: queues must be 1 or more and end at 65535 or below", f.queue, f.queues)
	}
	var failOpen bool
	switch f.fail {
	case "closed":
	case "open":
		failOpen = true
	default:
		return gateway.Config{}, usagef("--fail %q: want open or closed", f.fail)
	}
	replyPath, err := gateway.ParseReplyPath(f.replyPath)
	if err != nil {
		return gateway.Config{}, usagef("--reply-path: %v", err)
	}
	xdpMode, err := xdp.ParseMode(f.xdp)
	if err != nil {
		return gateway.Config{}, usagef("--xdp: %v", err)
	}
	var xdpIfaces []string
	if f.xdpIfaces != "" {
		if xdpMode == xdp.ModeOff {
			return gateway.Config{}, usagef("--xdp-interfaces names links for XDP, but --xdp is off")
		}
		if xdpIfaces, err = xdp.ParseInterfaces(f.xdpIfaces); err != nil {
			return gateway.Config{}, usagef("%v", err)
		}
	}
	if f.maxPending < 1 {
		return gateway.Config{}, usagef("--max-pending %d: must be at least 1", f.maxPending)
	}
	if f.metrics != "" {
		if _, err := netip.ParseAddrPort(f.metrics); err != nil {
			return gateway.Config{}, usagef("--metrics %q: want HOST:PORT with an IP address, e.g. 127.0.0.1:9847", f.metrics)
		}
	}
	if f.keyFile != "" {
		if _, err := cookies.LoadKeyFile(f.keyFile); err != nil {
			return gateway.Config{}, usagef("--key-file: %v", err)
		}
	}
	backend, err := f.backendOverride()
	if err != nil {
		return gateway.Config{}, err
	}
	cfg := gateway.Config{
		Services:      f.protect,
		Mode:          mode,
		Queue:         uint16(f.queue),
		Queues:        uint16(f.queues),
		Local:         f.local,
		FailOpen:      failOpen,
		ReplyPath:     replyPath,
		XDP:           xdpMode,
		XDPInterfaces: xdpIfaces,
		KeyFile:       f.keyFile,
		MetricsAddr:   f.metrics,
		Backend:       backend,
		MaxPending:    f.maxPending,
		Thresholds:    f.thresholds,
		EngineMark:    firewall.DefaultEngineMark,
		HandoffMark:   firewall.DefaultHandoffMark,
	}
	if f.statsEvery < time.Second {
		return gateway.Config{}, usagef("--stats-interval %v: want 1s or more", f.statsEvery)
	}
	cfg.StatsInterval = f.statsEvery
	if err := cfg.FirewallConfig().Validate(); err != nil {
		return gateway.Config{}, usagef("%v", err)
	}
	return cfg, nil
}

// backendOverride turns the --backend-* flags into fixed options; any of
// them set means the operator decides, and unset ones take defaults.
func (f *gatewayFlags) backendOverride() (*engine.BackendOptions, error) {
	if f.backendMSS == 0 && f.backendWS == "" && f.backendSACK == "" {
		return nil, nil
	}
	o := engine.DefaultBackendOptions(f.protect[0].Addr().Is6())
	if f.backendMSS != 0 {
		if f.backendMSS < 88 || f.backendMSS > 65495 {
			return nil, usagef("--backend-mss %d: want 88..65495", f.backendMSS)
		}
		o.MSS = uint16(f.backendMSS)
	}
	switch ws, err := strconv.Atoi(f.backendWS); {
	case f.backendWS == "":
	case f.backendWS == "none" || f.backendWS == "-1":
		o.WindowScale = cookies.NoWindowScale
	case err != nil || ws < 0 || ws > int(cookies.MaxWindowScale):
		return nil, usagef("--backend-wscale %s: want 0..14 or none", f.backendWS)
	default:
		o.WindowScale = cookies.WindowScale(ws)
	}
	switch f.backendSACK {
	case "":
	case "on":
		o.SACKPermitted = true
	case "off":
		o.SACKPermitted = false
	default:
		return nil, usagef("--backend-sack %q: want on or off", f.backendSACK)
	}
	return &o, nil
}

// logger builds the event logger and the rate limit its lines pass.
func (f *gatewayFlags) logger(w io.Writer) (zerolog.Logger, *telemetry.LineLimiter, error) {
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || f.logLevel == "" {
		return zerolog.Logger{}, nil, usagef("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	var format telemetry.Format
	switch f.logFormat {
	case "json":
		format = telemetry.FormatJSON
	case "console":
		format = telemetry.FormatConsole
	default:
		return zerolog.Logger{}, nil, usagef("--log-format %q: want json or console", f.logFormat)
	}
	log, lim := telemetry.NewLogger(w, format, level, telemetry.LimitConfig{})
	return log, lim, nil
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
	cfg, err := f.config()
	if err != nil {
		return err
	}
	log, lim, err := f.logger(stdout)
	if err != nil {
		return err
	}
	cfg.Logger, cfg.LogLimiter = log, lim
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
	return gateway.Run(ctx, cfg)
}

func printRules(args []string, stdout, stderr io.Writer) error {
	var f gatewayFlags
	fs := newFlagSet(stdout, "rules")
	f.register(fs)
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	cfg.ResolveReopenWithin()
	rs, err := firewall.Rules(cfg.FirewallConfig())
	if err != nil {
		return usagef("%v", err)
	}
	_, err = rs.WriteTo(stdout)
	return err
}
