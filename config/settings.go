package config

import (
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// Settings are the top-level settings as the run command's flags hold
// them, before validation. A service's settings are the same type: its
// own keys over the top level's values.
type Settings struct {
	Protect       []netip.AddrPort
	Mode          string
	Metrics       string
	Queue         uint
	Queues        uint
	Local         bool
	KeyFile       string
	Fail          string
	ReplyPath     string
	XDP           string
	XDPInterfaces []string
	MaxPending    int
	// BackendMSS 0, BackendWScale "" and BackendSACK "" leave that option
	// to be learned from the backend.
	BackendMSS    uint
	BackendWScale string // 0..14, or none
	BackendSACK   string // on or off
	Thresholds    engine.Thresholds
	LogFormat     string
	LogLevel      string
	StatsInterval time.Duration
	CaptureDir    string
	EarlyData     bool
}

// Defaults returns the settings of a file or command line that sets none.
func Defaults() Settings {
	return Settings{
		Mode:          "auto",
		Queues:        1,
		Fail:          "closed",
		ReplyPath:     "ingress",
		XDP:           "auto",
		MaxPending:    engine.DefaultMaxPending,
		Thresholds:    engine.DefaultThresholds,
		LogFormat:     "json",
		LogLevel:      "info",
		StatsInterval: telemetry.DefaultStatsInterval,
		EarlyData:     true,
	}
}

// kind is how a key's value is written in the file.
type kind uint8

const (
	kindString   kind = iota
	kindUint          // a whole number, 0 or more
	kindInt           // a whole number
	kindFloat         // a number
	kindBool          // true or false
	kindDuration      // a Go duration string: "10s"
	kindWScale        // a whole number or none
	kindSACK          // true, false, on or off
	kindServices      // a list of ADDR:PORT
	kindNames         // a list of names
	kindPrefixes      // a list of CIDRs or addresses (services only)
)

// want says what a value of kind k looks like, for type errors.
var want = [...]string{
	kindString:   "a string",
	kindUint:     "a whole number, 0 or more",
	kindInt:      "a whole number",
	kindFloat:    "a number",
	kindBool:     "true or false",
	kindDuration: `a duration such as "10s" or "1m30s"`,
	kindWScale:   "a window shift 0..14, or none",
	kindSACK:     "true, false, on or off",
	kindServices: `a list of ADDR:PORT ("[ADDR]:PORT", quoted, for IPv6)`,
	kindNames:    "a list of names",
	kindPrefixes: `a list of CIDRs ("203.0.113.0/24") or addresses`,
}

// key is one top-level key: a run flag of the same name with dashes.
type key struct {
	name string
	kind kind
	// restart says a reload cannot change it: the running gateway
	// keeps its queues, sockets, links, key and logger for its life.
	restart bool
	// service says a service may set its own.
	service bool
	// field points at the key's value in s.
	field func(s *Settings) any
}

// keys are the top-level keys, in the order of run's flags. services is
// not among them: it is the file's alone.
var keys = []key{
	{name: "protect", kind: kindServices, field: func(s *Settings) any { return &s.Protect }},
	{name: "mode", kind: kindString, service: true, field: func(s *Settings) any { return &s.Mode }},
	{name: "metrics", kind: kindString, restart: true, field: func(s *Settings) any { return &s.Metrics }},
	{name: "queue", kind: kindUint, restart: true, field: func(s *Settings) any { return &s.Queue }},
	{name: "queues", kind: kindUint, restart: true, field: func(s *Settings) any { return &s.Queues }},
	{name: "local", kind: kindBool, restart: true, field: func(s *Settings) any { return &s.Local }},
	{name: "key_file", kind: kindString, restart: true, field: func(s *Settings) any { return &s.KeyFile }},
	{name: "fail", kind: kindString, restart: true, field: func(s *Settings) any { return &s.Fail }},
	{name: "reply_path", kind: kindString, restart: true, field: func(s *Settings) any { return &s.ReplyPath }},
	{name: "xdp", kind: kindString, restart: true, field: func(s *Settings) any { return &s.XDP }},
	{name: "xdp_interfaces", kind: kindNames, restart: true, field: func(s *Settings) any { return &s.XDPInterfaces }},
	{name: "max_pending", kind: kindInt, restart: true, field: func(s *Settings) any { return &s.MaxPending }},
	{name: "early_data", kind: kindBool, restart: true, field: func(s *Settings) any { return &s.EarlyData }},
	{name: "backend_mss", kind: kindUint, service: true, field: func(s *Settings) any { return &s.BackendMSS }},
	{name: "backend_wscale", kind: kindWScale, service: true, field: func(s *Settings) any { return &s.BackendWScale }},
	{name: "backend_sack", kind: kindSACK, service: true, field: func(s *Settings) any { return &s.BackendSACK }},
	{name: "half_open_high", kind: kindInt, service: true, field: func(s *Settings) any { return &s.Thresholds.HalfOpenHigh }},
	{name: "half_open_low", kind: kindInt, service: true, field: func(s *Settings) any { return &s.Thresholds.HalfOpenLow }},
	{name: "syn_rate_high", kind: kindFloat, service: true, field: func(s *Settings) any { return &s.Thresholds.SYNRateHigh }},
	{name: "syn_rate_low", kind: kindFloat, service: true, field: func(s *Settings) any { return &s.Thresholds.SYNRateLow }},
	{name: "hold", kind: kindDuration, service: true, field: func(s *Settings) any { return &s.Thresholds.Hold }},
	{name: "handshake_timeout", kind: kindDuration, service: true, field: func(s *Settings) any { return &s.Thresholds.HandshakeTimeout }},
	{name: "log_format", kind: kindString, restart: true, field: func(s *Settings) any { return &s.LogFormat }},
	{name: "log_level", kind: kindString, restart: true, field: func(s *Settings) any { return &s.LogLevel }},
	{name: "stats_interval", kind: kindDuration, restart: true, field: func(s *Settings) any { return &s.StatsInterval }},
	{name: "capture_dir", kind: kindString, restart: true, field: func(s *Settings) any { return &s.CaptureDir }},
}

// The keys only a service has, besides those of keys marked service.
const (
	keyServices = "services"
	keyProtect  = "protect"
	keyAllow    = "allow"
	keyDeny     = "deny"
)

// lookup returns the top-level key name.
func lookup(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

// copyKey sets k's value in dst to its value in src.
func copyKey(k key, dst, src *Settings) {
	reflect.ValueOf(k.field(dst)).Elem().Set(reflect.ValueOf(k.field(src)).Elem())
}

// Keys returns the top-level keys the file takes, services last: the run
// flags' names with dashes as underscores.
func Keys() []string {
	out := make([]string, 0, len(keys)+1)
	for _, k := range keys {
		out = append(out, k.name)
	}
	return append(out, keyServices)
}

// ServiceKeys returns the keys a services entry takes.
func ServiceKeys() []string {
	out := []string{keyProtect}
	for _, k := range keys {
		if k.service {
			out = append(out, k.name)
		}
	}
	return append(out, keyAllow, keyDeny)
}

// FlagName returns the flag of top-level key name: half-open-high for
// half_open_high.
func FlagName(name string) string { return strings.ReplaceAll(name, "_", "-") }

// keyName returns the key of flag name.
func keyName(flag string) string { return strings.ReplaceAll(flag, "-", "_") }
