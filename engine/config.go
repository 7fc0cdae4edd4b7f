package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/synguard/synguard/cookies"
)

// Mode is how a service's SYNs are handled.
type Mode uint8

// Modes.
const (
	// ModeAlways answers every SYN with a cookie, like kernel SYNPROXY.
	ModeAlways Mode = iota + 1
	// ModeAuto passes SYNs while the service is quiet and switches to
	// cookies under pressure.
	ModeAuto
	// ModeOff observes and reports only; SYNs pass.
	ModeOff
)

// String returns the mode's command-line name.
var modeNames = [...]string{ModeAlways: "always", ModeAuto: "auto", ModeOff: "off"}

func (m Mode) String() string {
	if m != 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode parses a command-line mode name.
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if m != 0 && s == name {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want always, auto or off)", s)
}

// BackendOptions are the TCP options a backend announces in its SYN-ACK.
// The engine announces the same to clients, so that after the hand-off
// both ends agree on window scaling and segment size.
type BackendOptions struct {
	MSS           uint16
	WindowScale   cookies.WindowScale // cookies.NoWindowScale if the backend does not scale
	SACKPermitted bool
}

// DefaultBackendOptions are assumed until a backend's options are learned:
// what a Linux backend with default settings announces.
func DefaultBackendOptions(ipv6 bool) BackendOptions {
	mss := uint16(1460)
	if ipv6 {
		mss = 1440
	}
	return BackendOptions{MSS: mss, WindowScale: 7, SACKPermitted: true}
}

// ServiceConfig is one protected service and the settings it does not
// take from Config's defaults.
type ServiceConfig struct {
	Addr netip.AddrPort
	// Mode, when zero, is Config.Mode.
	Mode Mode
	// Thresholds, when zero, are Config.Thresholds.
	Thresholds Thresholds
	// Backend, when set, fixes the options announced to clients instead
	// of learning them; nil takes Config.BackendOverride.
	Backend *BackendOptions
	// Allow lists sources whose SYNs always pass to the backend,
	// unchallenged; Deny lists sources whose SYNs are dropped. Deny wins
	// where both match.
	Allow, Deny []netip.Prefix
}

// MaxServices bounds the services an engine protects over its life,
// reloads included: counters and histograms are sized for it up front.
const MaxServices = 256

// MaxSourcePrefixes bounds each service's allow and deny lists, which
// are searched for every SYN.
const MaxSourcePrefixes = 64

// Config configures an Engine.
type Config struct {
	Services []ServiceConfig
	// Mode, Thresholds and BackendOverride are the defaults of services
	// that do not set their own.
	Mode Mode

	// Cookies makes and checks SYN cookies.
	Cookies *cookies.Jar
	// NewBatch makes the Batch each of the engine's own goroutines (the
	// timers, each hand-off goroutine) sends through; workers get theirs
	// from NewWorker's caller.
	NewBatch func() Batch
	// Kernel is the conntrack table flows are handed off to.
	Kernel Kernel
	// Replayer, when set, is the fast path that replays SYNs and
	// completes handshakes itself (FastPathReplayed).
	Replayer Replayer
	// HandoffMark is the connmark given to handed-off flows.
	HandoffMark uint32

	// BackendOverride, when set, replaces learned backend options.
	BackendOverride *BackendOptions

	// MaxPending bounds flows waiting for their backend.
	MaxPending int
	// SYNRetries is how often a replayed SYN is resent to a silent backend
	// before the client gets an RST; RetryInitial is the first wait, doubled
	// each time.
	SYNRetries   int
	RetryInitial time.Duration
	// Linger keeps a handed-off flow's record to answer a retransmitted
	// backend SYN-ACK (our ACK was lost) without involving the client.
	Linger time.Duration
	// ConntrackTimeout is the initial timeout of created conntrack entries.
	ConntrackTimeout time.Duration

	// EarlyData opens a window of EarlySegments in cookie SYN-ACKs and
	// holds the client's first segments in their queue until the
	// hand-off; off, the SYN-ACK's window is 0. MaxHeld bounds the
	// segments held at once; zero means DefaultMaxHeld.
	EarlyData bool
	MaxHeld   int

	// Thresholds drive auto mode (and what off mode reports); zero means
	// DefaultThresholds.
	Thresholds Thresholds

	// Events receives what the engine reports; nil discards it.
	Events Events
	// Extra adds counts made outside the engine (the XDP fast path's) to
	// Stats, so the control loop and the metrics see every SYN; nil for
	// none.
	Extra CounterSource
	// AfterControl, when set, is called on the timer goroutine right after
	// each control step, so work that follows the engine's state rides on
	// the engine's wake-up instead of a timer of its own: on an idle
	// gateway every wake-up costs more than the work. It must return
	// quickly.
	AfterControl func(now time.Time)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Defaults.
const (
	DefaultMaxPending   = 65536
	DefaultSYNRetries   = 4
	DefaultRetryInitial = 250 * time.Millisecond
	DefaultLinger       = 3 * time.Second
)

func (c *Config) setDefaults() {
	if c.Mode == 0 {
		c.Mode = ModeAuto
	}
	if c.MaxHeld == 0 {
		c.MaxHeld = DefaultMaxHeld
	}
	if c.Thresholds == (Thresholds{}) {
		c.Thresholds = DefaultThresholds
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.SYNRetries == 0 {
		c.SYNRetries = DefaultSYNRetries
	}
	if c.RetryInitial == 0 {
		c.RetryInitial = DefaultRetryInitial
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	if c.Cookies == nil || c.NewBatch == nil || c.Kernel == nil {
		return errors.New("engine needs a cookie jar, a batch maker and a conntrack table")
	}
	if !c.Mode.valid() {
		return fmt.Errorf("unknown mode %d", c.Mode)
	}
	if err := c.Thresholds.Validate(); err != nil {
		return err
	}
	if c.MaxPending < 0 || c.SYNRetries < 0 || c.RetryInitial < 0 {
		return errors.New("negative limits")
	}
	return validateServices(c.Services)
}

func (m Mode) valid() bool { return m == ModeAlways || m == ModeAuto || m == ModeOff }

// validateServices checks a service list as given, before defaults.
func validateServices(services []ServiceConfig) error {
	if len(services) == 0 {
		return errors.New("no services to protect")
	}
	if len(services) > MaxServices {
		return fmt.Errorf("%d services: at most %d", len(services), MaxServices)
	}
	seen := make(map[netip.AddrPort]bool)
	for _, s := range services {
		if err := s.validate(); err != nil {
			return fmt.Errorf("service %s: %w", s.Addr, err)
		}
		if seen[s.Addr] {
			return fmt.Errorf("service %s listed twice", s.Addr)
		}
		seen[s.Addr] = true
	}
	return nil
}

func (s *ServiceConfig) validate() error {
	if !s.Addr.IsValid() || s.Addr.Port() == 0 || s.Addr.Addr().IsUnspecified() {
		return errors.New("need a specific address and a non-zero port")
	}
	if s.Mode != 0 && !s.Mode.valid() {
		return fmt.Errorf("unknown mode %d", s.Mode)
	}
	if s.Thresholds != (Thresholds{}) {
		if err := s.Thresholds.Validate(); err != nil {
			return err
		}
	}
	for _, list := range []struct {
		name     string
		prefixes []netip.Prefix
	}{{"allow", s.Allow}, {"deny", s.Deny}} {
		if len(list.prefixes) > MaxSourcePrefixes {
			return fmt.Errorf("%s: %d prefixes, at most %d", list.name, len(list.prefixes), MaxSourcePrefixes)
		}
		for _, p := range list.prefixes {
			if !p.IsValid() || p.Addr().Zone() != "" {
				return fmt.Errorf("%s: %s is not a prefix", list.name, p)
			}
			if p.Addr().Is4() != s.Addr.Addr().Is4() {
				return fmt.Errorf("%s: %s is of the other address family than the service", list.name, p)
			}
		}
	}
	return nil
}
