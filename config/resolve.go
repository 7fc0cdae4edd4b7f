package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/gateway"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// Config is a validated configuration: the gateway's, and how its events
// are logged (the command builds the logger).
type Config struct {
	// Gateway has every service's settings resolved: its Mode,
	// Thresholds and Backend are set (Backend nil means learned), and
	// Gateway.Mode and Gateway.Thresholds are the top-level values.
	Gateway   gateway.Config
	LogFormat telemetry.Format
	LogLevel  zerolog.Level
}

// Source is where a configuration comes from: a file, the command line's
// flags, or both. Load reads it; calling Load again (on a reload) reads
// the file afresh, with the same flags over it.
type Source struct {
	// Path is the configuration file; empty for flags alone.
	Path string
	// Flags holds the run flags' values. Set names the flags given on
	// the command line ("half-open-high"); only those are used, and they
	// win over the file's top-level keys. --protect replaces the file's
	// protect and services.
	Flags Settings
	Set   []string
}

// Load reads and validates the configuration. Its errors are *Error,
// but for a file that cannot be read.
func (s Source) Load() (Config, error) {
	var f *file
	if s.Path != "" {
		data, err := os.ReadFile(s.Path)
		if err != nil {
			return Config{}, fmt.Errorf("read configuration: %w", err)
		}
		if f, err = parse(s.Path, data); err != nil {
			return Config{}, err
		}
	}
	return s.resolve(f)
}

// Parse validates the configuration file name whose contents are data,
// without flags.
func Parse(name string, data []byte) (Config, error) {
	f, err := parse(name, data)
	if err != nil {
		return Config{}, err
	}
	return Source{Path: name}.resolve(f)
}

// resolve validates f (nil without a file) with the flags over it.
func (s Source) resolve(f *file) (Config, error) {
	v := validator{}
	top, at := Defaults(), origins{}
	if f != nil {
		v.file, top, at = f.name, f.top, maps.Clone(f.set)
	}
	for _, name := range s.Set {
		k, ok := lookup(keyName(name))
		if !ok {
			return Config{}, fmt.Errorf("config: --%s is not a setting", name)
		}
		copyKey(k, &top, &s.Flags)
		at[k.name] = origin{flag: "--" + name}
	}

	var entries []entry
	switch {
	case at[keyProtect].flag != "":
		for _, a := range top.Protect {
			entries = append(entries, entry{addr: a, at: at[keyProtect]})
		}
	case f != nil:
		entries = append(append(entries, f.protect...), f.services...)
	}
	switch {
	case len(entries) == 0 && at[keyProtect].flag != "":
		return Config{}, &Error{Key: at[keyProtect].flag, Err: errors.New("no services given")}
	case len(entries) == 0 && f == nil:
		return Config{}, &Error{Err: errors.New("--protect or --config is required")}
	case len(entries) == 0:
		return Config{}, v.errorf(f.root, "", "no services to protect: list them under protect or services")
	case len(entries) > engine.MaxServices:
		return Config{}, v.errorf(entries[engine.MaxServices].at, keyProtect, "%d services: at most %d", len(entries), engine.MaxServices)
	}
	cfg, err := v.top(top, at)
	if err != nil {
		return Config{}, err
	}
	first := make(map[netip.AddrPort]origin, len(entries))
	for _, e := range entries {
		if o, dup := first[e.addr]; dup {
			where := "already"
			if o.path != "" {
				where = fmt.Sprintf("already, by %s at line %d", o.path, o.line)
			}
			return Config{}, v.errorf(e.at, keyProtect, "%s is protected %s", e.addr, where)
		}
		first[e.addr] = e.at
		sc, err := v.service(top, at, e)
		if err != nil {
			return Config{}, err
		}
		cfg.Gateway.Services = append(cfg.Gateway.Services, sc)
	}
	// The firewall's own check, for anything the above let through.
	if err := cfg.Gateway.FirewallConfig().Validate(); err != nil {
		o := origin{line: 1, col: 1}
		if f != nil {
			o = f.root
		}
		return Config{}, v.errorf(o, "", "%v", err)
	}
	return cfg, nil
}

// validator checks settings, locating errors by their keys' origins.
type validator struct {
	file string // the file's name; empty without one
}

// errorf returns the error of the setting name, from o.
func (v validator) errorf(o origin, name, format string, args ...any) *Error {
	return o.errorf(v.file, name, format, args...)
}

// keyErr returns the error of the most specific of keys names.
func (v validator) keyErr(at origins, names []string, format string, args ...any) *Error {
	name, o := at.blame(names...)
	return v.errorf(o, name, format, args...)
}

// top validates the top-level settings s, whose keys came from at, into
// a configuration without services.
func (v validator) top(s Settings, at origins) (Config, error) {
	errf := func(name, format string, args ...any) (Config, error) {
		return Config{}, v.keyErr(at, []string{name}, format, args...)
	}
	mode, err := engine.ParseMode(s.Mode)
	if err != nil {
		return errf("mode", "%v", err)
	}
	th, err := v.thresholds(s, at)
	if err != nil {
		return Config{}, err
	}
	if _, err := v.backend(s, at, false); err != nil {
		return Config{}, err
	}
	switch {
	// queues counts the SYN queues; as many completion queues follow them
	// (docs/architecture.md, Queues and fail-open), so the whole run of
	// 2*queues numbers must fit.
	case s.Queues == 0 || s.Queues > 32768:
		return errf("queues", "want 1..32768, not %d (synguard takes as many completion queues again)", s.Queues)
	case s.Queue > 65535:
		return errf("queue", "want 0..65535, not %d", s.Queue)
	case s.Queue+2*s.Queues-1 > 65535:
		return Config{}, v.keyErr(at, []string{"queue", "queues"}, "%s (SYNs) and %s (handshake completions): the last queue number is 65535",
			queueRange(s.Queue, s.Queues), queueRange(s.Queue+s.Queues, s.Queues))
	}
	var failOpen bool
	switch s.Fail {
	case "closed":
	case "open":
		failOpen = true
	default:
		return errf("fail", "want open or closed, not %q", s.Fail)
	}
	replyPath, err := gateway.ParseReplyPath(s.ReplyPath)
	if err != nil {
		return errf("reply_path", "%v", err)
	}
	xdpMode, err := xdp.ParseMode(s.XDP)
	if err != nil {
		return errf("xdp", "%v", err)
	}
	if len(s.XDPInterfaces) > 0 && xdpMode == xdp.ModeOff {
		return Config{}, v.keyErr(at, []string{"xdp_interfaces", "xdp"}, "names links for XDP, but xdp is off")
	}
	if s.MaxPending < 1 {
		return errf("max_pending", "want 1 or more, not %d", s.MaxPending)
	}
	if s.Metrics != "" {
		if _, err := netip.ParseAddrPort(s.Metrics); err != nil {
			return errf("metrics", "want HOST:PORT with an IP address, e.g. 127.0.0.1:9847, not %q", s.Metrics)
		}
	}
	if s.KeyFile != "" {
		if _, err := cookies.LoadKeyFile(s.KeyFile); err != nil {
			return errf("key_file", "%v", err)
		}
	}
	var format telemetry.Format
	switch s.LogFormat {
	case "json":
		format = telemetry.FormatJSON
	case "console":
		format = telemetry.FormatConsole
	default:
		return errf("log_format", "want json or console, not %q", s.LogFormat)
	}
	level, err := zerolog.ParseLevel(s.LogLevel)
	if err != nil || s.LogLevel == "" {
		return errf("log_level", "want debug, info, warn or error, not %q", s.LogLevel)
	}
	if s.StatsInterval < time.Second {
		return errf("stats_interval", "want 1s or more, not %v", s.StatsInterval)
	}
	return Config{
		Gateway: gateway.Config{
			Mode:          mode,
			Queue:         uint16(s.Queue),
			Queues:        uint16(s.Queues),
			Local:         s.Local,
			FailOpen:      failOpen,
			KeyFile:       s.KeyFile,
			MetricsAddr:   s.Metrics,
			StatsInterval: s.StatsInterval,
			Thresholds:    th,
			MaxPending:    s.MaxPending,
			EarlyData:     s.EarlyData,
			EngineMark:    firewall.DefaultEngineMark,
			HandoffMark:   firewall.DefaultHandoffMark,
			ReplyPath:     replyPath,
			XDP:           xdpMode,
			XDPInterfaces: s.XDPInterfaces,
			CaptureDir:    s.CaptureDir,
		},
		LogFormat: format,
		LogLevel:  level,
	}, nil
}

// service resolves entry e: its own settings over the top level's, top
// (whose keys came from at).
func (v validator) service(top Settings, at origins, e entry) (engine.ServiceConfig, error) {
	s, o := top, at
	if len(e.set) > 0 {
		o = maps.Clone(at)
		for name, eo := range e.set {
			k, _ := lookup(name)
			copyKey(k, &s, &e.own)
			o[name] = eo
		}
	}
	mode, err := engine.ParseMode(s.Mode)
	if err != nil {
		return engine.ServiceConfig{}, v.keyErr(o, []string{"mode"}, "%v", err)
	}
	th, err := v.thresholds(s, o)
	if err != nil {
		return engine.ServiceConfig{}, err
	}
	backend, err := v.backend(s, o, e.addr.Addr().Is6())
	if err != nil {
		return engine.ServiceConfig{}, err
	}
	if e.addr.Addr().IsLoopback() && !top.Local {
		return engine.ServiceConfig{}, v.errorf(e.at, keyProtect, "%s: a loopback address is never forwarded; protect it with local: true (--local)", e.addr)
	}
	return engine.ServiceConfig{
		Addr:       e.addr,
		Mode:       mode,
		Thresholds: th,
		Backend:    backend,
		Allow:      e.allow,
		Deny:       e.deny,
	}, nil
}

// thresholdKeys are the watermark keys in pairs the engine checks
// together, and those it checks alone.
var thresholdKeys = [][]string{
	{"half_open_high", "half_open_low"},
	{"syn_rate_high", "syn_rate_low"},
	{"hold"},
	{"handshake_timeout"},
}

// thresholds validates s's watermarks. The engine says what is wrong;
// to name the keys, each group is checked with the others at their
// defaults.
func (v validator) thresholds(s Settings, at origins) (engine.Thresholds, error) {
	th := s.Thresholds
	if th.Validate() == nil {
		return th, nil
	}
	for _, group := range thresholdKeys {
		probe := Defaults()
		for _, name := range group {
			k, _ := lookup(name)
			copyKey(k, &probe, &s)
		}
		if err := probe.Thresholds.Validate(); err != nil {
			return engine.Thresholds{}, v.keyErr(at, group, "%v", err)
		}
	}
	// Only the groups together are wrong; none of them is today.
	return engine.Thresholds{}, v.keyErr(at, []string{"half_open_high", "half_open_low", "syn_rate_high", "syn_rate_low", "hold", "handshake_timeout"}, "%v", th.Validate())
}

// backend returns the backend options s fixes: nil when it fixes none,
// or the defaults for the family with the options it sets.
func (v validator) backend(s Settings, at origins, ipv6 bool) (*engine.BackendOptions, error) {
	if s.BackendMSS == 0 && s.BackendWScale == "" && s.BackendSACK == "" {
		return nil, nil
	}
	errf := func(name, format string, args ...any) (*engine.BackendOptions, error) {
		return nil, v.keyErr(at, []string{name}, format, args...)
	}
	o := engine.DefaultBackendOptions(ipv6)
	if s.BackendMSS != 0 {
		if s.BackendMSS < 88 || s.BackendMSS > 65495 {
			return errf("backend_mss", "want 88..65495, not %d", s.BackendMSS)
		}
		o.MSS = uint16(s.BackendMSS)
	}
	switch ws, err := strconv.Atoi(s.BackendWScale); {
	case s.BackendWScale == "":
	case s.BackendWScale == "none" || s.BackendWScale == "-1":
		o.WindowScale = cookies.NoWindowScale
	case err != nil || ws < 0 || ws > int(cookies.MaxWindowScale):
		return errf("backend_wscale", "want 0..14 or none, not %q", s.BackendWScale)
	default:
		o.WindowScale = cookies.WindowScale(ws)
	}
	switch s.BackendSACK {
	case "":
	case "on":
		o.SACKPermitted = true
	case "off":
		o.SACKPermitted = false
	default:
		return errf("backend_sack", "want on or off, not %q", s.BackendSACK)
	}
	return &o, nil
}

// queueRange names n queues from first: "queue 7" or "queues 7..8".
func queueRange(first, n uint) string {
	if n == 1 {
		return fmt.Sprintf("queue %d", first)
	}
	return fmt.Sprintf("queues %d..%d", first, first+n-1)
}
