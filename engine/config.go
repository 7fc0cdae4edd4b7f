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

// Config configures an Engine.
type Config struct {
	Services []netip.AddrPort
	Mode     Mode

	// Cookies makes and checks SYN cookies.
	Cookies *cookies.Jar
	// NewBatch makes the Batch each of the engine's own goroutines (the
	// timers, each hand-off goroutine) sends through; workers get theirs
	// from NewWorker's caller.
	NewBatch func() Batch
	// Kernel is the conntrack table flows are handed off to.
	Kernel Kernel
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

	// Thresholds drive auto mode (and what off mode reports); zero means
	// DefaultThresholds.
	Thresholds Thresholds

	// Events receives what the engine reports; nil discards it.
	Events Events
	// Extra adds counts made outside the engine (the XDP fast path's) to
	// Stats, so the control loop and the metrics see every SYN; nil for
	// none.
	Extra CounterSource
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
	if len(c.Services) == 0 {
		return errors.New("no services to protect")
	}
	seen := make(map[netip.AddrPort]bool)
	for _, s := range c.Services {
		if !s.IsValid() || s.Port() == 0 || s.Addr().IsUnspecified() {
			return fmt.Errorf("service %s: need a specific address and a non-zero port", s)
		}
		if seen[s] {
			return fmt.Errorf("service %s listed twice", s)
		}
		seen[s] = true
	}
	if c.Cookies == nil || c.NewBatch == nil || c.Kernel == nil {
		return errors.New("engine needs a cookie jar, a batch maker and a conntrack table")
	}
	if c.Mode != ModeAlways && c.Mode != ModeAuto && c.Mode != ModeOff {
		return fmt.Errorf("unknown mode %d", c.Mode)
	}
	if err := c.Thresholds.Validate(); err != nil {
		return err
	}
	if c.MaxPending < 0 || c.SYNRetries < 0 || c.RetryInitial < 0 {
		return errors.New("negative limits")
	}
	return nil
}
