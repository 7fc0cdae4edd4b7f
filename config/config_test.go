package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/gateway"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

func load(t *testing.T, src Source) Config {
	t.Helper()
	cfg, err := src.Load()
	if err != nil {
		t.Fatalf("load %+v: %v", src, err)
	}
	return cfg
}

func backend(mss uint16, ws cookies.WindowScale, sack bool) *engine.BackendOptions {
	return &engine.BackendOptions{MSS: mss, WindowScale: ws, SACKPermitted: sack}
}

func TestGoodFiles(t *testing.T) {
	def := engine.DefaultThresholds
	base := gateway.Config{
		Mode:          engine.ModeAuto,
		Queues:        1,
		StatsInterval: telemetry.DefaultStatsInterval,
		Thresholds:    def,
		MaxPending:    engine.DefaultMaxPending,
		EarlyData:     true,
		EngineMark:    firewall.DefaultEngineMark,
		HandoffMark:   firewall.DefaultHandoffMark,
		XDP:           xdp.ModeAuto,
	}
	top := def
	top.HalfOpenHigh, top.HalfOpenLow, top.Hold = 200, 50, 30*time.Second
	api := top
	api.SYNRateHigh, api.SYNRateLow, api.HandshakeTimeout = 800, 100, 3*time.Second

	fullTop := engine.Thresholds{HalfOpenHigh: 100, HalfOpenLow: 10, SYNRateHigh: 1500.5, SYNRateLow: 200, Hold: 90 * time.Second, HandshakeTimeout: 4 * time.Second}
	fullBackend4, fullBackend6 := backend(1400, cookies.NoWindowScale, true), backend(1400, cookies.NoWindowScale, true)

	tests := []struct {
		file string
		want Config
	}{
		{"minimal.yaml", Config{
			Gateway: with(base, func(c *gateway.Config) {
				c.Services = []engine.ServiceConfig{{Addr: netip.MustParseAddrPort("203.0.113.2:80"), Mode: engine.ModeAuto, Thresholds: def}}
			}),
			LogFormat: telemetry.FormatJSON, LogLevel: zerolog.InfoLevel,
		}},
		{"services.yaml", Config{
			Gateway: with(base, func(c *gateway.Config) {
				c.Thresholds = top
				c.Services = []engine.ServiceConfig{
					{
						Addr: netip.MustParseAddrPort("203.0.113.2:80"), Mode: engine.ModeAuto, Thresholds: top,
						Backend: backend(1400, 7, true),
						Allow:   []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")},
					},
					{
						// The family's defaults, then the top level's MSS, then its own.
						Addr: netip.MustParseAddrPort("[2001:db8:b::2]:443"), Mode: engine.ModeAlways, Thresholds: top,
						Backend: backend(1400, 9, false),
						Deny:    []netip.Prefix{netip.MustParsePrefix("2001:db8:bad::/48")},
					},
					{
						Addr: netip.MustParseAddrPort("203.0.113.3:8443"), Mode: engine.ModeOff, Thresholds: api,
						Backend: backend(1400, 7, true),
						Deny:    []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("192.0.2.99/32")},
					},
				}
			}),
			LogFormat: telemetry.FormatJSON, LogLevel: zerolog.InfoLevel,
		}},
		{"full.yaml", Config{
			Gateway: gateway.Config{
				Services: []engine.ServiceConfig{
					{Addr: netip.MustParseAddrPort("203.0.113.2:80"), Mode: engine.ModeAlways, Thresholds: fullTop, Backend: fullBackend4},
					{Addr: netip.MustParseAddrPort("[2001:db8:b::2]:80"), Mode: engine.ModeAlways, Thresholds: fullTop, Backend: fullBackend6},
					{
						Addr: netip.MustParseAddrPort("203.0.113.4:25"), Mode: engine.ModeAuto,
						Thresholds: engine.Thresholds{HalfOpenHigh: 64, HalfOpenLow: 8, SYNRateHigh: 300, SYNRateLow: 30, Hold: 0, HandshakeTimeout: 2 * time.Second},
						Backend:    backend(536, 2, true),
						Allow:      []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
						Deny:       []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")},
					},
				},
				Mode:          engine.ModeAlways,
				Queue:         7,
				Queues:        2,
				FailOpen:      true,
				MetricsAddr:   "127.0.0.1:9847",
				StatsInterval: 30 * time.Second,
				Thresholds:    fullTop,
				MaxPending:    1000,
				EarlyData:     false,
				EngineMark:    firewall.DefaultEngineMark,
				HandoffMark:   firewall.DefaultHandoffMark,
				ReplyPath:     gateway.ReplyRoute,
				XDP:           xdp.ModeGeneric,
				XDPInterfaces: []string{"to-client", "eth1"},
				CaptureDir:    "/var/lib/synguard/captures",
			},
			LogFormat: telemetry.FormatConsole, LogLevel: zerolog.DebugLevel,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := load(t, Source{Path: filepath.Join("testdata", tt.file)})
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmp.AllowUnexported(zerolog.Logger{})); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func with(c gateway.Config, f func(*gateway.Config)) gateway.Config {
	f(&c)
	return c
}

// Every key of full.yaml is one of the keys, and it sets every key: a
// key added to the table without a test fails here.
func TestFullFileSetsEveryKey(t *testing.T) {
	f, err := parse("full.yaml", mustRead(t, "testdata/full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		// key_file needs a file of mode 0600, which git does not keep:
		// TestKeyFile has it.
		if _, ok := f.set[k]; !ok && k != keyServices && k != "key_file" {
			t.Errorf("full.yaml does not set %s", k)
		}
	}
	for _, k := range ServiceKeys() {
		if _, ok := f.services[0].set[k]; !ok && k != keyProtect && k != keyAllow && k != keyDeny {
			t.Errorf("full.yaml's service does not set %s", k)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badFiles are files with one mistake each, and where it is.
var badFiles = []struct {
	name      string
	yaml      string
	line, col int
	key       string // the key's path in the error
	msg       string // in the error
}{
	{"empty", "", 1, 1, "", "file is empty"},
	{"comments only", "# nothing\n\n", 1, 1, "", "file is empty"},
	{"no services", "mode: auto\n", 1, 1, "", "no services to protect"},
	{"empty services", "services: []\n", 1, 1, "", "no services to protect"},
	{"unknown key", "protect: [203.0.113.2:80]\nmod: auto\n", 2, 1, "mod", "unknown key; did you mean mode?"},
	{"unknown key far from all", "protect: [203.0.113.2:80]\nfrobnicate: 1\n", 2, 1, "frobnicate", "unknown key (want one of protect, mode,"},
	{"unknown service key", "services:\n  - protect: 203.0.113.2:80\n  - protect: 203.0.113.3:80\n    half_open_hgh: 3\n", 4, 5, "services[1].half_open_hgh", "did you mean half_open_high?"},
	{"service key typo of allow", "services:\n  - protect: 203.0.113.2:80\n    alow: [192.0.2.1]\n", 3, 5, "services[0].alow", "did you mean allow?"},
	{"top-level key in a service", "services:\n  - protect: 203.0.113.2:80\n    queue: 3\n", 3, 5, "services[0].queue", "not a per-service setting"},
	{"allow at the top level", "protect: [203.0.113.2:80]\nallow: [192.0.2.1]\n", 2, 1, "allow", "per service"},
	{"not a number", "protect: [203.0.113.2:80]\nqueue: abc\n", 2, 1, "queue", `want a whole number, 0 or more, got "abc"`},
	{"negative", "protect: [203.0.113.2:80]\nqueues: -1\n", 2, 1, "queues", "want a whole number, 0 or more, got -1"},
	{"huge", "protect: [203.0.113.2:80]\nmax_pending: 99999999999999999999999\n", 2, 1, "max_pending", "want a whole number"},
	{"fraction for a count", "services:\n  - protect: 203.0.113.2:80\n    half_open_high: 1.5\n", 3, 5, "services[0].half_open_high", "want a whole number, got 1.5"},
	{"string for a number", "protect: [203.0.113.2:80]\nsyn_rate_high: fast\n", 2, 1, "syn_rate_high", `want a number, got "fast"`},
	{"infinite rate", "protect: [203.0.113.2:80]\nsyn_rate_high: .inf\n", 2, 1, "syn_rate_high", "want a number, got .inf"},
	{"yes for a bool", "protect: [203.0.113.2:80]\nlocal: yes\n", 2, 1, "local", `want true or false, got "yes"`},
	{"duration without unit", "protect: [203.0.113.2:80]\nhold: 10\n", 2, 1, "hold", `want a duration such as "10s"`},
	{"bad duration", "services:\n  - protect: 203.0.113.2:80\n    handshake_timeout: soon\n", 3, 5, "services[0].handshake_timeout", `got "soon"`},
	{"number for a string", "protect: [203.0.113.2:80]\nmode: 7\n", 2, 1, "mode", "want a string, got 7"},
	{"nothing", "protect: [203.0.113.2:80]\nmode:\n", 2, 1, "mode", "want a string, got nothing"},
	{"list for a string", "protect: [203.0.113.2:80]\nfail: [open]\n", 2, 1, "fail", "want a string, got a list"},
	{"scalar for a list", "protect: 203.0.113.2:80\n", 1, 1, "protect", "want a list of ADDR:PORT"},
	{"mapping in a list", "protect:\n  - 203.0.113.2:80\n  - {addr: 203.0.113.3}\n", 3, 5, "protect[1]", "got a mapping"},
	{"key twice", "protect: [203.0.113.2:80]\nqueue: 1\nqueue: 2\n", 3, 1, "queue", "given twice (first at line 2, column 1)"},
	{"service key twice", "services:\n  - protect: 203.0.113.2:80\n    mode: auto\n    mode: off\n", 4, 5, "services[0].mode", "given twice (first at line 3, column 5)"},
	{"services twice", "services: []\nservices: []\n", 2, 1, "services", "given twice"},
	{"duplicate service", "services:\n  - protect: 203.0.113.2:80\n  - protect: 203.0.113.2:80\n", 3, 5, "services[1].protect", "203.0.113.2:80 is protected already, by services[0].protect at line 2"},
	{"duplicate across lists", "protect: [203.0.113.2:80]\nservices:\n  - protect: 203.0.113.2:80\n", 3, 5, "services[0].protect", "by protect[0] at line 1"},
	{"duplicate v4-mapped", "protect: [203.0.113.2:80, \"[::ffff:203.0.113.2]:80\"]\n", 1, 27, "protect[1]", "protected already"},
	{"service without protect", "services:\n  - mode: always\n", 2, 5, "services[0]", "no protect"},
	{"service not a mapping", "services:\n  - 203.0.113.2:80\n", 2, 5, "services[0]", "want a mapping with protect"},
	{"services not a list", "services:\n  protect: 203.0.113.2:80\n", 1, 1, "services", "want a list of services"},
	{"bad address", "protect: [203.0.113.300:80]\n", 1, 11, "protect[0]", `"203.0.113.300:80" is not ADDR:PORT`},
	{"bad service address", "services:\n  - protect: 203.0.113.2\n", 2, 5, "services[0].protect", "is not ADDR:PORT"},
	{"port zero", "protect: [203.0.113.2:0]\n", 1, 11, "protect[0]", "port 0"},
	{"wildcard", "protect: [0.0.0.0:80]\n", 1, 11, "protect[0]", "not a wildcard"},
	{"multicast", "protect: [224.0.0.1:80]\n", 1, 11, "protect[0]", "unicast"},
	{"loopback without local", "protect: [203.0.113.2:80]\nservices:\n  - protect: 127.0.0.1:80\n", 3, 5, "services[0].protect", "local: true"},
	{"unquoted IPv6", "protect:\n  - [2001:db8::1]:443\n", 2, 18, "", `quote IPv6 services: "[2001:db8::1]:443"`},
	{"unknown mode", "services:\n  - protect: 203.0.113.2:80\n    mode: cookies\n", 3, 5, "services[0].mode", `unknown mode "cookies" (want always, auto or off)`},
	{"unknown top mode", "protect: [203.0.113.2:80]\nmode: sometimes\n", 2, 1, "mode", `unknown mode "sometimes"`},
	{"service watermarks crossed", "half_open_high: 100\nservices:\n  - protect: 203.0.113.2:80\n    half_open_low: 100\n", 4, 5, "services[0].half_open_low", "half-open watermarks 100/100: want 0 <= low < high"},
	{"service high under top low", "half_open_low: 50\nservices:\n  - protect: 203.0.113.2:80\n    half_open_high: 40\n", 4, 5, "services[0].half_open_high", "half-open watermarks 50/40"},
	{"top watermarks crossed", "protect: [203.0.113.2:80]\nsyn_rate_low: 3000\n", 2, 1, "syn_rate_low", "SYN rate watermarks 3000/2000"},
	{"high watermark too high", "services:\n  - protect: 203.0.113.2:80\n    half_open_high: 100000\n", 3, 5, "services[0].half_open_high", "at most"},
	{"negative hold", "protect: [203.0.113.2:80]\nhold: -1s\n", 2, 1, "hold", "negative hold"},
	{"short handshake timeout", "services:\n  - protect: 203.0.113.2:80\n    handshake_timeout: 1ms\n", 3, 5, "services[0].handshake_timeout", "handshake timeout 1ms"},
	{"bad CIDR", "services:\n  - protect: 203.0.113.2:80\n    allow: [198.51.100.0/33]\n", 3, 13, "services[0].allow[0]", `"198.51.100.0/33" is not a CIDR`},
	{"bad address in deny", "services:\n  - protect: 203.0.113.2:80\n    deny:\n      - 192.0.2.1\n      - somewhere\n", 5, 9, "services[0].deny[1]", `"somewhere" is not a CIDR or an address`},
	{"other family", "services:\n  - allow: [2001:db8::/32]\n    protect: 203.0.113.2:80\n", 2, 13, "services[0].allow[0]", "other address family"},
	{"allow not a list", "services:\n  - protect: 203.0.113.2:80\n    allow: 192.0.2.1\n", 3, 5, "services[0].allow", "want a list of CIDRs"},
	{"too many prefixes", "services:\n  - protect: 203.0.113.2:80\n    deny: [" + manyPrefixes(engine.MaxSourcePrefixes+1) + "]\n", 3, 5, "services[0].deny", "65 prefixes: at most 64"},
	{"bad wscale", "services:\n  - protect: 203.0.113.2:80\n    backend_wscale: 15\n", 3, 5, "services[0].backend_wscale", `want 0..14 or none, not "15"`},
	{"wscale word", "protect: [203.0.113.2:80]\nbackend_wscale: lots\n", 2, 1, "backend_wscale", `want 0..14 or none, not "lots"`},
	{"bad sack", "protect: [203.0.113.2:80]\nbackend_sack: maybe\n", 2, 1, "backend_sack", `want on or off, not "maybe"`},
	{"sack number", "protect: [203.0.113.2:80]\nbackend_sack: 1\n", 2, 1, "backend_sack", "want true, false, on or off, got 1"},
	{"small mss", "services:\n  - protect: 203.0.113.2:80\n    backend_mss: 20\n", 3, 5, "services[0].backend_mss", "want 88..65495, not 20"},
	{"bad fail", "protect: [203.0.113.2:80]\nfail: maybe\n", 2, 1, "fail", `want open or closed, not "maybe"`},
	{"bad reply path", "protect: [203.0.113.2:80]\nreply_path: sideways\n", 2, 1, "reply_path", `unknown reply path "sideways"`},
	{"bad xdp", "protect: [203.0.113.2:80]\nxdp: sometimes\n", 2, 1, "xdp", `unknown XDP mode "sometimes"`},
	{"interfaces with xdp off", "protect: [203.0.113.2:80]\nxdp: off\nxdp_interfaces: [eth0]\n", 3, 1, "xdp_interfaces", "xdp is off"},
	{"bad interface name", "protect: [203.0.113.2:80]\nxdp_interfaces: [\"eth0,eth1\"]\n", 2, 18, "xdp_interfaces[0]", "not an interface name"},
	{"bad metrics", "protect: [203.0.113.2:80]\nmetrics: localhost\n", 2, 1, "metrics", "want HOST:PORT"},
	{"queues zero", "protect: [203.0.113.2:80]\nqueues: 0\n", 2, 1, "queues", "want 1..32768, not 0"},
	{"queues past half", "protect: [203.0.113.2:80]\nqueues: 32769\n", 2, 1, "queues", "want 1..32768, not 32769 (synguard takes as many completion queues again)"},
	{"queue past the end", "protect: [203.0.113.2:80]\nqueue: 65535\nqueues: 2\n", 2, 1, "queue", "queues 65535..65536 (SYNs) and queues 65537..65538 (handshake completions)"},
	{"no room for completions", "protect: [203.0.113.2:80]\nqueue: 65534\nqueues: 2\n", 2, 1, "queue", "queues 65534..65535 (SYNs) and queues 65536..65537 (handshake completions): the last queue number is 65535"},
	{"no room for the completion queue", "protect: [203.0.113.2:80]\nqueue: 65535\n", 2, 1, "queue", "queue 65535 (SYNs) and queue 65536 (handshake completions): the last queue number is 65535"},
	{"max pending zero", "protect: [203.0.113.2:80]\nmax_pending: 0\n", 2, 1, "max_pending", "want 1 or more"},
	{"missing key file", "protect: [203.0.113.2:80]\nkey_file: /nonexistent/cookie.key\n", 2, 1, "key_file", "/nonexistent/cookie.key"},
	{"bad log format", "protect: [203.0.113.2:80]\nlog_format: xml\n", 2, 1, "log_format", `want json or console, not "xml"`},
	{"bad log level", "protect: [203.0.113.2:80]\nlog_level: loud\n", 2, 1, "log_level", `not "loud"`},
	{"short stats interval", "protect: [203.0.113.2:80]\nstats_interval: 100ms\n", 2, 1, "stats_interval", "want 1s or more"},
	{"anchor", "protect: &p [203.0.113.2:80]\n", 1, 10, "protect", "anchors and aliases are not supported"},
	{"alias", "services:\n  - protect: 203.0.113.2:80\n    allow: &a [192.0.2.1]\n  - protect: 203.0.113.3:80\n    allow: *a\n", 3, 12, "services[0].allow", "anchors and aliases are not supported"},
	{"merge key", "services:\n  - <<: {mode: auto}\n    protect: 203.0.113.2:80\n", 2, 5, "services[0]", "merge keys"},
	{"tag", "protect: [203.0.113.2:80]\nqueue: !!str 7\n", 2, 8, "queue", "tags are not supported"},
	{"two documents", "protect: [203.0.113.2:80]\n---\nmode: auto\n", 3, 1, "", "a second YAML document"},
	{"not a mapping", "- 203.0.113.2:80\n", 1, 1, "", "want a mapping of settings"},
	{"scalar document", "hello\n", 1, 1, "", "want a mapping of settings"},
	{"syntax", "protect: [203.0.113.2:80\n", 1, 10, "", "YAML:"},
	{"nested too deep", "protect: " + strings.Repeat("[", 20), 1, 25, "", "nested more than 16 levels deep"},
	{"block sequences too deep", "protect:\n" + strings.Repeat("- ", 20), 2, 33, "", "nested more than 16 levels deep"},
	{"too many keys", strings.Repeat("k: v\n", maxKeys+1), maxKeys + 1, 2, "", "more than 4096 keys"},
	{"tab indent", "protect:\n\t- 203.0.113.2:80\n", 2, 1, "", "YAML:"},
}

func manyPrefixes(n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = fmt.Sprintf("192.0.2.%d", i)
	}
	return strings.Join(ps, ", ")
}

func TestBadFiles(t *testing.T) {
	for _, tt := range badFiles {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want an *Error", err, err)
			}
			if e.File != "bad.yaml" || e.Line != tt.line || e.Column != tt.col || e.Key != tt.key {
				t.Errorf("error at %s:%d:%d key %q, want bad.yaml:%d:%d key %q (%v)", e.File, e.Line, e.Column, e.Key, tt.line, tt.col, tt.key, err)
			}
			prefix := fmt.Sprintf("bad.yaml:%d:%d: ", tt.line, tt.col)
			if tt.key != "" {
				prefix += tt.key + ": "
			}
			if s := err.Error(); !strings.HasPrefix(s, prefix) || !strings.Contains(s, tt.msg) {
				t.Errorf("error %q, want it to start with %q and contain %q", s, prefix, tt.msg)
			}
		})
	}
}

func TestServiceLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("protect:\n")
	for i := range engine.MaxServices + 1 {
		fmt.Fprintf(&b, "  - 203.0.113.%d:%d\n", 1+i/200, 1000+i)
	}
	_, err := Parse("many.yaml", []byte(b.String()))
	want := fmt.Sprintf("many.yaml:%d:5: protect[%d]: ", engine.MaxServices+2, engine.MaxServices)
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "at most 256") {
		t.Fatalf("error %v, want one starting %q", err, want)
	}
}

func TestFileTooLarge(t *testing.T) {
	data := []byte("protect: [203.0.113.2:80]\n" + strings.Repeat("#\n", MaxFileSize))
	if _, err := Parse("big.yaml", data); err == nil || !strings.Contains(err.Error(), "big.yaml:1:1: file is") {
		t.Fatalf("error %v, want the file refused for its size", err)
	}
}

// Flags given on the command line win over the file's top-level keys,
// not over a service's own; --protect replaces the file's services.
func TestFlagsOverFile(t *testing.T) {
	flags := Defaults()
	flags.Mode = "always"
	flags.Thresholds.HalfOpenHigh = 300
	flags.Thresholds.SYNRateLow = 5 // not given: ignored
	flags.Queue = 9
	cfg := load(t, Source{Path: "testdata/services.yaml", Flags: flags, Set: []string{"mode", "half-open-high", "queue"}})
	gw := cfg.Gateway
	if gw.Mode != engine.ModeAlways || gw.Queue != 9 || gw.Thresholds.HalfOpenHigh != 300 || gw.Thresholds.HalfOpenLow != 50 || gw.Thresholds.SYNRateLow != 500 {
		t.Errorf("top level: mode %v queue %d thresholds %+v; want the flags' mode, queue and high watermark, the file's low one, the default SYN rate", gw.Mode, gw.Queue, gw.Thresholds)
	}
	modes := []engine.Mode{gw.Services[0].Mode, gw.Services[1].Mode, gw.Services[2].Mode}
	if want := []engine.Mode{engine.ModeAlways, engine.ModeAlways, engine.ModeOff}; !slices.Equal(modes, want) {
		t.Errorf("service modes %v, want %v: the flag replaces the top-level mode, not a service's own", modes, want)
	}
	for i, s := range gw.Services {
		if s.Thresholds.HalfOpenHigh != 300 {
			t.Errorf("service %d: half-open high %d, want the flag's 300", i, s.Thresholds.HalfOpenHigh)
		}
	}

	flags.Protect = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:22")}
	cfg = load(t, Source{Path: "testdata/services.yaml", Flags: flags, Set: []string{"protect"}})
	if got := cfg.Gateway.Addrs(); !slices.Equal(got, flags.Protect) {
		t.Errorf("services %v with --protect, want only %v", got, flags.Protect)
	}
	if th := cfg.Gateway.Services[0].Thresholds; th.HalfOpenHigh != 200 || th.Hold != 30*time.Second {
		t.Errorf("--protect's service has thresholds %+v, want the file's top level", th)
	}

	// Flags alone: the defaults, and only what was given.
	cfg = load(t, Source{Flags: flags, Set: []string{"protect", "queue"}})
	if gw := cfg.Gateway; gw.Queue != 9 || gw.Mode != engine.ModeAuto || gw.Thresholds != engine.DefaultThresholds || len(gw.Services) != 1 {
		t.Errorf("flags alone: %+v", gw)
	}
}

func TestFlagErrors(t *testing.T) {
	flags := Defaults()
	flags.Thresholds.HalfOpenLow = 250
	flags.Mode = "never"
	flags.BackendWScale = "15"
	tests := []struct {
		path string
		set  []string
		want string
	}{
		{"testdata/services.yaml", []string{"half-open-low"}, "--half-open-low: half-open watermarks 250/200"},
		{"testdata/services.yaml", []string{"mode"}, `--mode: unknown mode "never"`},
		{"", []string{"mode"}, "--protect or --config is required"},
		{"testdata/minimal.yaml", []string{"backend-wscale"}, `--backend-wscale: want 0..14 or none, not "15"`},
	}
	for _, tt := range tests {
		_, err := Source{Path: tt.path, Flags: flags, Set: tt.set}.Load()
		if err == nil || err.Error() != tt.want && !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s with %v: error %v, want %q", tt.path, tt.set, err, tt.want)
		}
	}
	// A flag's value is consistent at the top level, not with a
	// service's own key: that key is named.
	path := filepath.Join(t.TempDir(), "low.yaml")
	if err := os.WriteFile(path, []byte("half_open_high: 100\nservices:\n  - protect: 203.0.113.2:80\n    half_open_low: 60\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flags = Defaults()
	flags.Thresholds.HalfOpenHigh = 50
	_, err := Source{Path: path, Flags: flags, Set: []string{"half-open-high"}}.Load()
	if want := path + ":4:5: services[0].half_open_low: half-open watermarks 60/50"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %v, want %q", err, want)
	}
	if _, err := (Source{Path: "testdata/nonexistent.yaml"}).Load(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// A key file named relative to the configuration file is found next to
// it; one that --key-file would refuse is refused with its line.
func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	if err := cookies.WriteKeyFile(filepath.Join(dir, "cookie.key")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "synguard.yaml")
	if err := os.WriteFile(path, []byte("protect: [203.0.113.2:80]\nkey_file: cookie.key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := load(t, Source{Path: path})
	if want := filepath.Join(dir, "cookie.key"); cfg.Gateway.KeyFile != want {
		t.Errorf("key file %q, want %q", cfg.Gateway.KeyFile, want)
	}
	if err := os.Chmod(filepath.Join(dir, "cookie.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Source{Path: path}.Load()
	if want := path + ":2:1: key_file: key file "; err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("error %v, want it to start %q", err, want)
	}
}

func TestRestartNeeded(t *testing.T) {
	base, err := Parse("a.yaml", []byte("protect: [203.0.113.2:80]\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A value for each key other than its default.
	values := map[string]string{
		"protect":           "[203.0.113.2:80, 203.0.113.3:80]",
		"mode":              "always",
		"metrics":           "127.0.0.1:9847",
		"queue":             "3",
		"queues":            "2",
		"local":             "true",
		"fail":              "open",
		"reply_path":        "route",
		"xdp":               "native",
		"xdp_interfaces":    "[eth0]",
		"max_pending":       "10",
		"early_data":        "false",
		"backend_mss":       "1400",
		"backend_wscale":    "3",
		"backend_sack":      "off",
		"half_open_high":    "100",
		"half_open_low":     "10",
		"syn_rate_high":     "1000",
		"syn_rate_low":      "10",
		"hold":              "1s",
		"handshake_timeout": "1s",
		"log_format":        "console",
		"log_level":         "debug",
		"stats_interval":    "1m",
		"capture_dir":       "/tmp/captures",
		"services":          "[{protect: 203.0.113.9:80, mode: off}]",
	}
	dir := t.TempDir()
	if err := cookies.WriteKeyFile(filepath.Join(dir, "k")); err != nil {
		t.Fatal(err)
	}
	values["key_file"] = filepath.Join(dir, "k")
	for _, name := range Keys() {
		v, ok := values[name]
		if !ok {
			t.Errorf("no test value for %s", name)
			continue
		}
		doc := "protect: [203.0.113.2:80]\n"
		if name == keyProtect {
			doc = ""
		}
		next, err := Parse("b.yaml", []byte(doc+name+": "+v+"\n"))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got := RestartNeeded(base, next)
		var want []string
		if !Reloadable(name) {
			want = []string{name}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s changed: restart needed for %v, want %v", name, got, want)
		}
		if back := RestartNeeded(next, base); !slices.Equal(back, want) {
			t.Errorf("%s changed back: restart needed for %v, want %v", name, back, want)
		}
	}
	for _, k := range keys {
		if _, ok := restartValues[k.name]; ok != k.restart {
			t.Errorf("%s: restart %v, but compared by RestartNeeded: %v", k.name, k.restart, ok)
		}
	}
}

// docs/config.md lists every key, with whether a reload can change it.
func TestDocsListEveryKey(t *testing.T) {
	doc := string(mustRead(t, "../docs/config.md"))
	rows := map[string]string{} // key: its reload column
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		name := strings.Trim(strings.TrimSpace(cells[0]), "`")
		rows[name] = strings.TrimSpace(cells[len(cells)-1])
	}
	for _, name := range append(Keys(), ServiceKeys()...) {
		reload, ok := rows[name]
		if !ok {
			t.Errorf("docs/config.md has no row for %s", name)
			continue
		}
		if want := map[bool]string{true: "yes", false: "restart"}[Reloadable(name) || slices.Contains(ServiceKeys(), name)]; reload != want {
			t.Errorf("docs/config.md: %s reload %q, want %q", name, reload, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"half_open_hgh", "half_open_high"},
		{"half-open-high", "half_open_high"},
		{"servics", "services"},
		{"Mode", "mode"},
		{"xdp_interface", "xdp_interfaces"},
		{"q", ""},
		{"frobnicate", ""},
	} {
		if got := suggest(tt.in, Keys()); got != tt.want {
			t.Errorf("suggest(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if d := distance("kitten", "sitting"); d != 3 {
		t.Errorf("distance(kitten, sitting) = %d, want 3", d)
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"198.51.100.0/24", "198.51.100.0/24"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"::ffff:0.0.0.0/80", ""},
		{"fe80::1%eth0", ""},
		{"192.0.2.1/", ""},
	} {
		p, err := ParsePrefix(tt.in)
		if got := p.String(); err != nil && tt.want != "" || err == nil && got != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %q", tt.in, p, err, tt.want)
		}
	}
}
