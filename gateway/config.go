package gateway

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// Config is a validated gateway configuration, built from flags or a
// configuration file.
type Config struct {
	// Services are the protected services with their own settings; Mode,
	// Thresholds and Backend are the defaults of those that set none.
	Services []engine.ServiceConfig
	Mode     engine.Mode
	Queue    uint16
	Queues   uint16
	Local    bool
	FailOpen bool
	KeyFile  string
	// MetricsAddr is HOST:PORT for /metrics, /api/stats and the dashboard
	// at /; empty disables them.
	MetricsAddr string
	// StatsInterval is how often a stats event per service is logged; 0
	// means telemetry.DefaultStatsInterval.
	StatsInterval time.Duration
	// LogLimiter is the rate limit Logger's lines pass through, for
	// synguard_log_suppressed_total; nil leaves that metric out.
	LogLimiter *telemetry.LineLimiter
	// Thresholds drive auto mode; zero means engine.DefaultThresholds.
	Thresholds engine.Thresholds
	// Backend overrides learned backend options when non-nil.
	Backend    *engine.BackendOptions
	MaxPending int
	// EarlyData opens a window in cookie SYN-ACKs and holds the client's
	// first segments in the queue until the backend answers (engine.Config).
	EarlyData bool
	// ProbeInterval is how often backends are probed for their options.
	ProbeInterval time.Duration

	EngineMark, HandoffMark uint32
	// StaleMark tags segments of closing handed-off flows; ReopenWithin
	// is how close to expiry (seconds) an entry counts as closing. Zero
	// means DefaultStaleMark and DefaultReopenWithin; at start the latter
	// is replaced by the namespace's TIME_WAIT timeout.
	StaleMark    uint32
	ReopenWithin uint32
	// ReplyPath says how the engine's replies to a queued packet leave:
	// back out the interface it came in on (the default) or routed.
	ReplyPath ReplyPath
	// XDP is how the XDP fast path attaches (auto by default), on
	// XDPInterfaces or, when none are named, on every link that is up,
	// has an Ethernet address and is not loopback.
	XDP           xdp.Mode
	XDPInterfaces []string
	// CaptureDir, when set, receives a pcap sample of each attack's SYNs.
	CaptureDir string
	// LockDir holds the one-instance-per-namespace lock; empty means
	// DefaultLockDir.
	LockDir string
	Logger  zerolog.Logger

	// Reload, when set, asks for a reload each time it delivers (the
	// command sends on SIGHUP); Load then reads the new configuration.
	// Only services and their settings can change; a reload that changes
	// anything else is rejected.
	Reload <-chan struct{}
	Load   func() (Config, error)
}

// ReplyPath is how replies to queued packets (SYN-ACKs, above all) leave
// the host.
type ReplyPath uint8

// Reply paths.
const (
	// ReplyIngress sends a reply back out the interface its packet came
	// in on, to the neighbour that sent it, through a packet socket: no
	// route lookup and no netfilter output hooks (see package rawsock).
	// Replies to packets with no such link (sent by this host, or from
	// a tunnel) are routed.
	ReplyIngress ReplyPath = iota
	// ReplyRoute routes every reply and passes it through the output
	// hooks, as the kernel's SYNPROXY does: for asymmetric routing, or
	// OUTPUT rules that must see SYN-ACKs.
	ReplyRoute
)

var replyPathNames = [...]string{ReplyIngress: "ingress", ReplyRoute: "route"}

func (p ReplyPath) String() string {
	if int(p) < len(replyPathNames) {
		return replyPathNames[p]
	}
	return fmt.Sprintf("replypath(%d)", uint8(p))
}

// ParseReplyPath reads --reply-path.
func ParseReplyPath(s string) (ReplyPath, error) {
	if i := slices.Index(replyPathNames[:], s); i >= 0 {
		return ReplyPath(i), nil
	}
	return 0, fmt.Errorf("unknown reply path %q: want ingress or route", s)
}

// DefaultProbeInterval re-learns backend options often enough to follow
// a sysctl change on the backend, rarely enough to be invisible.
const DefaultProbeInterval = time.Minute

// Addrs returns the services' addresses.
func (c *Config) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(c.Services))
	for i, s := range c.Services {
		out[i] = s.Addr
	}
	return out
}

// modeOf returns service s's mode: its own, or the default.
func (c *Config) modeOf(s engine.ServiceConfig) engine.Mode {
	return cmp.Or(s.Mode, c.Mode, engine.ModeAuto)
}

// FirewallConfig returns the firewall configuration for c.
func (c *Config) FirewallConfig() firewall.Config {
	// Only a mode that lets SYNs through needs to see first ACKs.
	observe := false
	for _, s := range c.Services {
		observe = observe || c.modeOf(s) != engine.ModeAlways
	}
	return firewall.Config{
		Services:        c.Addrs(),
		Queue:           c.Queue,
		Queues:          c.Queues,
		Local:           c.Local,
		FailOpen:        c.FailOpen,
		EngineMark:      c.EngineMark,
		HandoffMark:     c.HandoffMark,
		ObserveFirstACK: observe,
		StaleMark:       cmp.Or(c.StaleMark, firewall.DefaultStaleMark),
		ReopenWithin:    cmp.Or(c.ReopenWithin, DefaultReopenWithin),
	}
}

// DefaultReopenWithin is the kernel's default TIME_WAIT timeout in
// conntrack (nf_conntrack_tcp_timeout_time_wait), in seconds.
const DefaultReopenWithin = 120

// ResolveReopenWithin sets ReopenWithin, when zero, to the namespace's
// conntrack TIME_WAIT timeout, as run installs it: `synguard rules` and
// `synguard run` resolve it alike. Unreadable (conntrack not loaded yet),
// it stays zero and DefaultReopenWithin applies.
func (c *Config) ResolveReopenWithin() {
	if c.ReopenWithin != 0 {
		return
	}
	if v, err := timeWaitTimeout(); err == nil && v > 0 {
		c.ReopenWithin = v
	}
}

// timeWaitTimeout reads the namespace's conntrack TIME_WAIT timeout: an
// entry with at most this long to live may belong to a closed flow whose
// ports a client reuses.
func timeWaitTimeout() (uint32, error) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait")
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	return uint32(v), err
}

func (c *Config) setDefaults() {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.EngineMark == 0 {
		c.EngineMark = firewall.DefaultEngineMark
	}
	if c.HandoffMark == 0 {
		c.HandoffMark = firewall.DefaultHandoffMark
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Mode == 0 {
		c.Mode = engine.ModeAuto
	}
	if c.LockDir == "" {
		c.LockDir = DefaultLockDir
	}
}
