package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/synguard/synguard/config"
	"github.com/synguard/synguard/cookies"
)

func runCLI(args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	code = exitCode(err, &errb)
	return out.String(), errb.String(), code
}

func TestBadCommandLines(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the one-line error
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"no protect", []string{"run"}, "--protect or --config is required"},
		{"bad address", []string{"run", "--protect", "203.0.113.300:80"}, `"203.0.113.300:80" is not ADDR:PORT`},
		{"no port", []string{"run", "--protect", "203.0.113.2"}, "is not ADDR:PORT"},
		{"port zero", []string{"run", "--protect", "203.0.113.2:0"}, "port 0"},
		{"wildcard", []string{"run", "--protect", "0.0.0.0:80"}, "not a wildcard"},
		{"v6 without brackets", []string{"run", "--protect", "2001:db8::1:80"}, "is not ADDR:PORT"},
		{"bad mode", []string{"rules", "--protect", "203.0.113.2:80", "--mode", "sometimes"}, `unknown mode "sometimes"`},
		{"bad fail", []string{"rules", "--protect", "203.0.113.2:80", "--fail", "maybe"}, `--fail: want open or closed, not "maybe"`},
		{"bad reply path", []string{"run", "--protect", "203.0.113.2:80", "--reply-path", "sideways"}, `--reply-path: unknown reply path "sideways"`},
		{"queues zero", []string{"rules", "--protect", "203.0.113.2:80", "--queues", "0"}, "--queues: want 1..32768, not 0"},
		{"queue range", []string{"rules", "--protect", "203.0.113.2:80", "--queue", "65535", "--queues", "2"}, "--queue: queues 65535..65536 (SYNs) and queues 65537..65538 (handshake completions): the last queue number is 65535"},
		{"bad metrics", []string{"rules", "--protect", "203.0.113.2:80", "--metrics", "localhost"}, "--metrics"},
		{"missing key file", []string{"rules", "--protect", "203.0.113.2:80", "--key-file", "/nonexistent/key"}, "--key-file"},
		{"bad wscale", []string{"rules", "--protect", "203.0.113.2:80", "--backend-wscale", "15"}, `--backend-wscale: want 0..14 or none, not "15"`},
		{"wscale not a number", []string{"rules", "--protect", "203.0.113.2:80", "--backend-wscale", "seven"}, `--backend-wscale: want 0..14 or none, not "seven"`},
		{"bad xdp interfaces", []string{"rules", "--protect", "203.0.113.2:80", "--xdp-interfaces", "eth0,,eth1"}, "an empty interface name"},
		{"xdp interfaces with xdp off", []string{"rules", "--protect", "203.0.113.2:80", "--xdp", "off", "--xdp-interfaces", "eth0"}, "--xdp-interfaces: names links for XDP, but xdp is off"},
		{"loopback forwarded", []string{"rules", "--protect", "127.0.0.1:80"}, "--protect: 127.0.0.1:80: a loopback address is never forwarded"},
		{"bad log level", []string{"run", "--protect", "203.0.113.2:80", "--log-level", "loud"}, `--log-level: want debug, info, warn or error, not "loud"`},
		{"missing config", []string{"run", "--config", "/nonexistent/synguard.yaml"}, "read configuration: open /nonexistent/synguard.yaml: no such file"},
		{"bad config", []string{"rules", "--config", "testdata/bad-mode.yaml"}, `testdata/bad-mode.yaml:9:5: services[1].mode: unknown mode "cookies" (want always, auto or off)`},
		{"unknown flag", []string{"run", "--protect", "203.0.113.2:80", "--colour"}, "flag provided but not defined"},
		{"stray argument", []string{"rules", "--protect", "203.0.113.2:80", "extra"}, `unexpected argument "extra"`},
		{"duplicate service", []string{"rules", "--protect", "203.0.113.2:80,203.0.113.2:80"}, "203.0.113.2:80"},
		{"lab unknown", []string{"lab", "sideways"}, `unknown subcommand "sideways"`},
		{"lab no subcommand", []string{"lab"}, "lab: no subcommand given"},
		{"lab flag for a subcommand", []string{"lab", "--name", "x"}, `lab: unknown subcommand "--name"`},
		{"version argument", []string{"version", "now"}, `version: unexpected argument "now"`},
		{"help unknown", []string{"help", "frobnicate"}, `unknown command "frobnicate"`},
		{"bench flood stray argument", []string{"bench", "flood", "--target", "203.0.113.2:80", "now"}, `bench flood: unexpected argument "now"`},
		{"bench flood no target", []string{"bench", "flood"}, "--target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantUsageError(t, tt.args, tt.want)
		})
	}
}

// wantUsageError runs synguard with args, requires exit status 2 and a last
// stderr line "synguard: ..." that contains want, and returns stderr's
// lines.
func wantUsageError(t *testing.T, args []string, want string) []string {
	t.Helper()
	_, stderr, code := runCLI(args...)
	if code != 2 {
		t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "synguard: ") || !strings.Contains(last, want) {
		t.Fatalf("error line %q, want it to contain %q", last, want)
	}
	return lines
}

func TestRulesPrintsWhatRunInstalls(t *testing.T) {
	out, stderr, code := runCLI("rules", "--protect", "203.0.113.2:80,[2001:db8:b::2]:443", "--queue", "7", "--queues", "2", "--fail", "open")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"*raw",
		"-A SYNGUARD-PREROUTING -d 203.0.113.2/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-balance 7:8 --queue-bypass",
		"-A SYNGUARD-PREROUTING -d 2001:db8:b::2/128 -p tcp -m tcp --dport 443",
		// The segments that complete handshakes have queues of their own.
		"-A SYNGUARD-FORWARD -d 203.0.113.2/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 9:10 --queue-bypass",
		"-A SYNGUARD-FORWARD -s 2001:db8:b::2/128 -p tcp -m tcp --sport 443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 9:10 --queue-bypass",
		"-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN",
		"-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rules output lacks %q:\n%s", want, out)
		}
	}
	local, _, _ := runCLI("rules", "--protect", "203.0.113.2:80", "--local")
	if !strings.Contains(local, "-I INPUT 1 -j SYNGUARD-INPUT") || strings.Contains(local, "FORWARD") {
		t.Errorf("--local rules:\n%s", local)
	}
}

func TestVersionAndHelp(t *testing.T) {
	out, _, code := runCLI("version")
	if code != 0 || !strings.HasPrefix(out, "synguard ") {
		t.Fatalf("version: %q exit %d", out, code)
	}
	out, _, code = runCLI("help")
	if code != 0 || !strings.Contains(out, "rules") {
		t.Fatalf("help: %q exit %d", out, code)
	}
}

// TestEveryCommandAnswersHelp runs synguard and every command of its
// command tree with -h and with --help: each must exit 0 with its usage on
// stdout, starting with its own usage line, and nothing on stderr. The
// list comes from the tree, so a new command is covered as it is added.
func TestEveryCommandAnswersHelp(t *testing.T) {
	tree := commandTree()
	for _, path := range []string{"run", "rules", "check", "lab", "lab up", "lab down", "lab demo", "lab serve", "bench", "bench flood", "bench report", "keygen", "version"} {
		if tree.find(path) == nil {
			t.Errorf("command %q is missing from the command tree", path)
		}
	}
	for _, c := range tree.all() {
		want := strings.TrimSpace("usage: synguard " + c.path)
		for _, help := range []string{"-h", "--help"} {
			args := append(strings.Fields(c.path), help)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				stdout, stderr, code := runCLI(args...)
				if code != 0 {
					t.Fatalf("exit %d, want 0 (stderr %q)", code, stderr)
				}
				if first, _, _ := strings.Cut(stdout, "\n"); first != want && !strings.HasPrefix(first, want+" ") {
					t.Fatalf("first line of the help %q, want it to start with %q; help:\n%s", first, want, stdout)
				}
				if stderr != "" {
					t.Errorf("stderr %q, want nothing", stderr)
				}
				// An example: at least one synguard command line, indented.
				_, example, ok := strings.Cut(stdout, "\nexample:\n")
				if first, _, _ := strings.Cut(example, "\n"); !ok || !strings.HasPrefix(first, "  synguard ") {
					t.Errorf("help has no example (want \"example:\" and then \"  synguard ...\"):\n%s", stdout)
				}
				// synguard help PATH shows the same.
				if out, _, code := runCLI(append([]string{"help"}, strings.Fields(c.path)...)...); code != 0 || out != stdout {
					t.Errorf("synguard help %s: exit %d, help\n%s\nwant the -h help", c.path, code, out)
				}
			})
		}
	}
}

func TestServiceListParsing(t *testing.T) {
	var l serviceList
	for _, v := range []string{"203.0.113.2:80, 203.0.113.3:443", "[2001:db8::1]:80", "[::ffff:203.0.113.9]:25"} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := l.String(), "203.0.113.2:80,203.0.113.3:443,[2001:db8::1]:80,203.0.113.9:25"; got != want {
		t.Fatalf("parsed %q, want %q", got, want)
	}
}

// keygen writes a key that --key-file takes, readable by its owner only,
// and never replaces one.
func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cookie.key")
	out, stderr, code := runCLI("keygen", path)
	if code != 0 || !strings.Contains(out, path) {
		t.Fatalf("keygen: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != cookies.KeySize || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %d bytes, mode %v; want %d bytes, mode 0600", st.Size(), st.Mode().Perm(), cookies.KeySize)
	}
	if _, err := cookies.LoadKeyFile(path); err != nil {
		t.Fatalf("--key-file would refuse it: %v", err)
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI("keygen", path); code != 1 || !strings.Contains(stderr, "exists") {
		t.Fatalf("keygen over an existing file: exit %d, stderr %q; want 1 and an error saying it exists", code, stderr)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, first) {
		t.Fatal("keygen changed an existing key file")
	}
	wantUsageError(t, []string{"keygen"}, "keygen: want the PATH")
	wantUsageError(t, []string{"keygen", path, "other"}, `keygen: unexpected argument "other"`)
}

// loadArgs loads the configuration run would for args.
func loadArgs(t *testing.T, args ...string) (config.Config, error) {
	t.Helper()
	var f gatewayFlags
	fs := newFlagSet(io.Discard, "run")
	f.register(fs)
	if err := parseArgs(fs, args); err != nil {
		t.Fatal(err)
	}
	return f.source(fs).Load()
}

// --backend-wscale takes a shift or "none", and its help shows no
// internal sentinel for "not given".
func TestBackendWindowScaleFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want cookies.WindowScale
	}{{"none", cookies.NoWindowScale}, {"-1", cookies.NoWindowScale}, {"0", 0}, {"14", 14}} {
		cfg, err := loadArgs(t, "--protect", "203.0.113.2:80", "--backend-wscale", tt.in)
		if err != nil {
			t.Fatalf("--backend-wscale %s: %v", tt.in, err)
		}
		if o := cfg.Gateway.Services[0].Backend; o == nil || o.WindowScale != tt.want {
			t.Errorf("--backend-wscale %s: backend options %+v; want window scale %v", tt.in, o, tt.want)
		}
	}
	out, _, code := runCLI("run", "-h")
	if code != 0 || strings.Contains(out, "default -2") || !strings.Contains(out, "-backend-wscale shift") {
		t.Fatalf("run -h (exit %d) shows a sentinel default or no placeholder for --backend-wscale:\n%s", code, out)
	}
}

// Every run flag but --config (and the hidden --cpuprofile) is a
// top-level key of the configuration file, and every key a flag.
func TestRunFlagsAreFileKeys(t *testing.T) {
	var f gatewayFlags
	fs := newFlagSet(io.Discard, "run")
	f.register(fs)
	var flags []string
	fs.VisitAll(func(fl *flag.Flag) {
		if fl.Name != "config" {
			flags = append(flags, fl.Name)
		}
	})
	var keys []string
	for _, k := range config.Keys() {
		if k != "services" {
			keys = append(keys, config.FlagName(k))
		}
	}
	slices.Sort(flags)
	slices.Sort(keys)
	if !slices.Equal(flags, keys) {
		t.Fatalf("run's flags %v\nthe file's keys %v", flags, keys)
	}
	// The flags' defaults are the file's.
	cfg, err := loadArgs(t, "--protect", "203.0.113.2:80")
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := config.Parse("x.yaml", []byte("protect: [203.0.113.2:80]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromFile, cfg, cmp.AllowUnexported(zerolog.Logger{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("flags' defaults differ from the file's (-file +flags):\n%s", diff)
	}
}

// check exits 0 with a one-line summary for a good configuration, and 2
// with the file, line and key of the first mistake otherwise.
func TestCheck(t *testing.T) {
	out, stderr, code := runCLI("check", "--config", "testdata/synguard.yaml")
	if want := "ok: 2 services (1 auto, 1 always), 1 with allow/deny lists; forward, SYN queues 7..8, completion queues 9..10, fail open, xdp auto\n"; code != 0 || out != want || stderr != "" {
		t.Errorf("check a good file: exit %d, stdout %q, stderr %q; want 0 and %q", code, out, stderr, want)
	}
	out, _, code = runCLI("check", "--config", "testdata/synguard.yaml", "--protect", "203.0.113.9:80", "--local", "--queues", "1")
	if want := "ok: 1 service (1 auto); local, SYN queue 7, completion queue 8, fail open, xdp auto\n"; code != 0 || out != want {
		t.Errorf("check a file with flags over it: exit %d, %q; want 0 and %q", code, out, want)
	}
	if out, _, code := runCLI("check", "--protect", "203.0.113.9:80", "--mode", "off"); code != 0 || !strings.HasPrefix(out, "ok: 1 service (1 off)") {
		t.Errorf("check flags alone: exit %d, %q", code, out)
	}
	wantUsageError(t, []string{"check", "--config", "testdata/bad-mode.yaml"}, `testdata/bad-mode.yaml:9:5: services[1].mode: unknown mode "cookies"`)
	wantUsageError(t, []string{"check", "--config", "testdata/synguard.yaml", "--half-open-low", "500"}, "--half-open-low: half-open watermarks 500/128")
	wantUsageError(t, []string{"check", "--config", "testdata/synguard.yaml", "extra"}, `check: unexpected argument "extra"`)
	wantUsageError(t, []string{"check", "--config", "testdata/nonexistent.yaml"}, "no such file")
	wantUsageError(t, []string{"check"}, "--protect or --config is required")

	// The key file is checked as run checks it.
	dir := t.TempDir()
	key := filepath.Join(dir, "cookie.key")
	if err := cookies.WriteKeyFile(key); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "synguard.yaml")
	if err := os.WriteFile(path, []byte("protect: [203.0.113.2:80]\nkey_file: cookie.key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI("check", "--config", path); code != 0 {
		t.Errorf("check with a good key file: exit %d, %s", code, stderr)
	}
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	wantUsageError(t, []string{"check", "--config", path}, path+":2:1: key_file: key file "+key+" has mode 0640")
}

// rules --config prints what the same settings as flags print, and flags
// over the file change it as they change run.
func TestRulesFromConfig(t *testing.T) {
	fromFlags, stderr, code := runCLI("rules", "--protect", "203.0.113.2:80,[2001:db8:b::2]:443", "--queue", "7", "--queues", "2", "--fail", "open")
	if code != 0 {
		t.Fatalf("rules with flags: exit %d: %s", code, stderr)
	}
	fromFile, stderr, code := runCLI("rules", "--config", "testdata/synguard.yaml")
	if code != 0 {
		t.Fatalf("rules --config: exit %d: %s", code, stderr)
	}
	if fromFile != fromFlags {
		t.Errorf("rules --config printed\n%s\nthe same settings as flags print\n%s", fromFile, fromFlags)
	}
	over, _, code := runCLI("rules", "--config", "testdata/synguard.yaml", "--queue", "3", "--protect", "203.0.113.9:22")
	if code != 0 || !strings.Contains(over, "--queue-balance 3:4") || !strings.Contains(over, "-d 203.0.113.9/32 -p tcp -m tcp --dport 22") ||
		strings.Contains(over, "203.0.113.2") || strings.Contains(over, "2001:db8:b::2") {
		t.Errorf("rules --config with --queue 3 --protect 203.0.113.9:22 (exit %d): want queues 3:4 and only that service:\n%s", code, over)
	}
}
