package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		{"no protect", []string{"run"}, "--protect is required"},
		{"bad address", []string{"run", "--protect", "203.0.113.300:80"}, `"203.0.113.300:80" is not ADDR:PORT`},
		{"no port", []string{"run", "--protect", "203.0.113.2"}, "is not ADDR:PORT"},
		{"port zero", []string{"run", "--protect", "203.0.113.2:0"}, "port 0"},
		{"wildcard", []string{"run", "--protect", "0.0.0.0:80"}, "not a wildcard"},
		{"v6 without brackets", []string{"run", "--protect", "2001:db8::1:80"}, "is not ADDR:PORT"},
		{"bad mode", []string{"rules", "--protect", "203.0.113.2:80", "--mode", "sometimes"}, `unknown mode "sometimes"`},
		{"bad fail", []string{"rules", "--protect", "203.0.113.2:80", "--fail", "maybe"}, `--fail "maybe"`},
		{"bad reply path", []string{"run", "--protect", "203.0.113.2:80", "--reply-path", "sideways"}, `--reply-path: unknown reply path "sideways"`},
		{"queues zero", []string{"rules", "--protect", "203.0.113.2:80", "--queues", "0"}, "queues must be 1 or more"},
		{"queue range", []string{"rules", "--protect", "203.0.113.2:80", "--queue", "65535", "--queues", "2"}, "end at 65535"},
		{"bad metrics", []string{"rules", "--protect", "203.0.113.2:80", "--metrics", "localhost"}, "--metrics"},
		{"missing key file", []string{"rules", "--protect", "203.0.113.2:80", "--key-file", "/nonexistent/key"}, "--key-file"},
		{"bad wscale", []string{"rules", "--protect", "203.0.113.2:80", "--backend-wscale", "15"}, "--backend-wscale 15"},
		{"wscale not a number", []string{"rules", "--protect", "203.0.113.2:80", "--backend-wscale", "seven"}, "--backend-wscale seven: want 0..14 or none"},
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
	for _, path := range []string{"run", "rules", "lab", "lab up", "lab down", "lab demo", "lab serve", "bench", "bench flood", "bench report", "keygen", "version"} {
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

// --backend-wscale takes a shift or "none", and its help shows no
// internal sentinel for "not given".
func TestBackendWindowScaleFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want cookies.WindowScale
	}{{"none", cookies.NoWindowScale}, {"-1", cookies.NoWindowScale}, {"0", 0}, {"14", 14}} {
		f := gatewayFlags{protect: serviceList{netip.MustParseAddrPort("203.0.113.2:80")}, backendWS: tt.in}
		o, err := f.backendOverride()
		if err != nil || o == nil || o.WindowScale != tt.want {
			t.Errorf("--backend-wscale %s: %+v, %v; want window scale %v", tt.in, o, err, tt.want)
		}
	}
	out, _, code := runCLI("run", "-h")
	if code != 0 || strings.Contains(out, "default -2") || !strings.Contains(out, "-backend-wscale shift") {
		t.Fatalf("run -h (exit %d) shows a sentinel default or no placeholder for --backend-wscale:\n%s", code, out)
	}
}
