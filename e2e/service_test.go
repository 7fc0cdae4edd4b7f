package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/lab"
)

// unitFile is the packaged systemd unit.
const unitFile = "../packaging/synguard.service"

// serviceSettings reads the [Service] settings of a unit file: each key's
// values, space-separated words, over all its lines.
func serviceSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, line)
			}
			out[k] = append(out[k], strings.Fields(v)...)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// syscallSets expands systemd's system call groups (@system-service and
// the groups it names) as this systemd defines them.
func syscallSets(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "syscall-filter", "--no-pager").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	sets := map[string][]string{}
	group := ""
	// A group's name starts a line; its members, indented, follow.
	for raw := range strings.Lines(string(out)) {
		line := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(raw, "@"):
			group = strings.Fields(line)[0]
		case line == "" || strings.HasPrefix(line, "#") || group == "":
		default:
			sets[group] = append(sets[group], strings.Fields(line)[0])
		}
	}
	return sets
}

// allowedSyscalls is what a SystemCallFilter= allow list lets through.
func allowedSyscalls(t *testing.T, filter []string) map[string]bool {
	t.Helper()
	sets := syscallSets(t)
	allowed := map[string]bool{}
	var add func(string)
	add = func(name string) {
		if !strings.HasPrefix(name, "@") {
			allowed[name] = true
			return
		}
		members, ok := sets[name]
		if !ok {
			t.Fatalf("SystemCallFilter names %s, which this systemd does not define", name)
		}
		for _, m := range members {
			add(m)
		}
	}
	for _, f := range filter {
		if strings.HasPrefix(f, "~") {
			t.Fatalf("SystemCallFilter=%s: this test reads allow lists only", f)
		}
		add(f)
	}
	return allowed
}

// sandboxScript emulates, in a mount namespace of its own, what the unit
// asks of the file system, then runs synguard with the unit's
// capabilities and no_new_privs:
//   - RuntimeDirectory=: /run/NAME, writable;
//   - ProtectSystem=strict: every mount read-only but /proc, /sys, /dev
//     and the runtime directory;
//   - ProtectHome=yes: /home, /root and /run/user empty and inaccessible;
//   - PrivateDevices=yes: a /dev with only the pseudo-devices.
//
// It checks its own work before it starts synguard, and exits 97 if the
// file system is not as the unit would have it. $1 is the capability
// list in setpriv's form, $2 the runtime directory, $3 the binary, the
// rest its arguments.
const sandboxScript = `
caps=$1; rundir=$2; bin=$3; shift 3
mkdir -p "$rundir"
mount --bind "$rundir" "$rundir"
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
	case $m in
	/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$rundir"|/run/netns/*|*\\*) continue ;;
	esac
	mount -o remount,bind,ro "$m" 2>/dev/null || echo "sandbox: $m stays writable" >&2
done
for d in /home /root /run/user; do
	[ -d "$d" ] && mount -t tmpfs -o mode=000 tmpfs "$d"
done
mount -t tmpfs -o mode=755,nosuid,noexec tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9
for p in /usr/sbin /etc /run /var/lib "$(dirname "$bin")"; do
	if touch "$p/.synguard-sandbox" 2>/dev/null; then
		rm -f "$p/.synguard-sandbox"; echo "sandbox: $p is writable" >&2; exit 97
	fi
done
if [ -n "$(ls -A /root)" ]; then echo "sandbox: /root is not empty" >&2; exit 97; fi
touch "$rundir/.synguard-sandbox" && rm "$rundir/.synguard-sandbox" || { echo "sandbox: $rundir is not writable" >&2; exit 97; }
exec setpriv --inh-caps="-all,$caps" --ambient-caps="-all,$caps" --bounding-set="-all,$caps" --no-new-privs -- "$bin" "$@"
`

// TestServiceSandbox runs synguard as the packaged unit would: with only
// the capabilities of its bounding set (ambient, as the unit gives them),
// no_new_privs, a read-only file system but for /run/synguard, no home
// directories, a private /dev, and systemd's NOTIFY_SOCKET and watchdog.
// In a lab, it must announce READY=1 once its rules are live, attach XDP,
// carry a client's download through cookies, feed the watchdog from a
// healthy packet path, and stop cleanly on SIGTERM with STOPPING=1. Every
// system call and socket family it and its children (iptables) used,
// traced by strace, must be in the unit's SystemCallFilter= and
// RestrictAddressFamilies=.
func TestServiceSandbox(t *testing.T) {
	for _, tool := range []string{"strace", "setpriv", "unshare", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: this test needs it (.ci/run installs it)", tool)
		}
	}
	unit := serviceSettings(t, unitFile)
	bounding := unit["CapabilityBoundingSet"]
	if len(bounding) == 0 || !slices.Equal(bounding, unit["AmbientCapabilities"]) {
		t.Fatalf("the unit's CapabilityBoundingSet %v and AmbientCapabilities %v differ", bounding, unit["AmbientCapabilities"])
	}
	var caps []string
	for _, c := range bounding {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	families := unit["RestrictAddressFamilies"]
	if len(unit["RuntimeDirectory"]) != 1 {
		t.Fatalf("the unit's RuntimeDirectory=%v: want one", unit["RuntimeDirectory"])
	}
	runDir := filepath.Join("/run", unit["RuntimeDirectory"][0])
	allowed := allowedSyscalls(t, unit["SystemCallFilter"])

	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)

	dir := t.TempDir()
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	trace := filepath.Join(dir, "trace")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Generic XDP: at tc the fast path completes plain handshakes in the
	// kernel, and the trace would not cover the queue's system calls.
	args := []string{"run", "--protect", service.String(), "--mode", "always", "--metrics", metricsAddr, "--xdp", "generic"}
	cmd := topo.Gateway.Command(ctx, "strace", append([]string{"-f", "-qq", "-o", trace, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-ec", sandboxScript, "sandbox", strings.Join(caps, ","), runDir, binary}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath, "WATCHDOG_USEC=1000000")
	cmd.Env = append(cmd.Env, unit["Environment"]...)
	log := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	// Killed, strace lets its tracee go on: Wait must not wait for
	// synguard's end of the output pipe.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	// tracee is synguard's pid: strace's one child (unshare, sh and
	// setpriv each exec the next).
	tracee := func() int {
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(children)))
		return pid
	}
	t.Cleanup(func() {
		if !exited {
			if pid := tracee(); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
			select {
			case <-done:
			case <-time.After(45 * time.Second):
				if pid := tracee(); pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				_ = cmd.Process.Kill()
				<-done
			}
		}
		if t.Failed() {
			t.Logf("synguard's output:\n%s", log.String())
		}
	})

	// The first notification is READY=1, and by then the rules are live.
	notes := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	var got []string
	receive := func(d time.Duration) (string, bool) {
		select {
		case m, ok := <-notes:
			if ok {
				got = append(got, m)
			}
			return m, ok
		case err := <-done:
			done <- err
			if !exited {
				t.Fatalf("synguard in the sandbox exited: %v", err)
			}
			return "", false
		case <-time.After(d):
			return "", false
		}
	}
	ready, ok := receive(30 * time.Second)
	if !ok {
		t.Fatalf("no notification within 30 s")
	}
	if !strings.Contains(saved(t, topo.Gateway), "SYNGUARD") {
		t.Fatalf("READY=1 arrived before the rules were live: %q", ready)
	}
	if want := "READY=1\nSTATUS=protecting " + service.String() + "; mode always; SYN queue 0, completion queue 1"; !strings.HasPrefix(ready, want) {
		t.Fatalf("first notification %q, want it to begin %q", ready, want)
	}
	if !regexp.MustCompile(`"event":"start".*"xdp":\{"[^"]+":"(tc|generic|native)"`).MatchString(log.String()) {
		t.Fatalf("the XDP fast path was not attached within the sandbox:\n%s", log.String())
	}

	download(t, topo.Client, service, 4<<20, nil)

	// The watchdog is fed while the path is healthy: every 0.5 s here.
	pings := 0
	deadline := time.Now().Add(30 * time.Second)
	for pings < 3 && time.Now().Before(deadline) {
		if m, ok := receive(time.Until(deadline)); ok && m == "WATCHDOG=1" {
			pings++
		}
	}
	if pings < 3 {
		t.Fatalf("%d WATCHDOG=1 in 30 s, want 3; notifications: %q", pings, got)
	}
	if strings.Contains(log.String(), "watchdog_unhealthy") {
		t.Fatalf("the packet path was found unhealthy:\n%s", log.String())
	}

	// SIGTERM to synguard (strace's child): STOPPING=1, rules removed,
	// a clean exit.
	pid := tracee()
	if pid <= 0 {
		t.Fatal("strace has no child")
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("synguard in the sandbox: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("synguard did not stop within 60 s of SIGTERM")
	}
	// The datagrams are in the socket; the reader hands them on.
	stopping := false
	for {
		m, ok := receive(time.Second)
		if !ok {
			break
		}
		stopping = stopping || strings.HasPrefix(m, "STOPPING=1")
	}
	if !stopping {
		t.Fatalf("no STOPPING=1; notifications: %q", got)
	}
	if s := saved(t, topo.Gateway); strings.Contains(s, "SYNGUARD") {
		t.Fatalf("rules left after the stop:\n%s", s)
	}

	used, fams := traced(t, trace, binary)
	var outside []string
	for s := range used {
		if !allowed[s] {
			outside = append(outside, s)
		}
	}
	slices.Sort(outside)
	if len(outside) > 0 {
		t.Errorf("system calls outside SystemCallFilter=%v: %v", unit["SystemCallFilter"], outside)
	}
	for f := range fams {
		if !slices.Contains(families, f) {
			t.Errorf("socket family %s is not in RestrictAddressFamilies=%v", f, families)
		}
	}
	// The trace must have seen the work: a vacuous check passes anything.
	for _, s := range []string{"bpf", "recvmmsg", "sendmmsg", "execve", "setsockopt"} {
		if !used[s] {
			t.Errorf("the trace has no %s call: it did not cover synguard's work", s)
		}
	}
}

// traced reads an strace -f log and returns the system calls and socket
// families used by bin and its descendants: from the successful execve of
// bin on, by any process but those of the sandbox's setup.
func traced(t *testing.T, path, bin string) (map[string]bool, map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)(\(| resumed>)`)
	family := regexp.MustCompile(`\bsocket(?:pair)?\((AF_[A-Z0-9]+)`)
	used, fams := map[string]bool{}, map[string]bool{}
	setup := map[string]bool{}
	main := ""
	for l := range strings.Lines(string(b)) {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		pid, call := m[1], m[2]
		if main == "" {
			if call == "execve" && strings.Contains(l, `execve("`+bin+`"`) && strings.HasSuffix(strings.TrimSpace(l), "= 0") {
				main = pid
			} else {
				setup[pid] = true
			}
			continue
		}
		if setup[pid] && pid != main {
			continue
		}
		used[call] = true
		if f := family.FindStringSubmatch(l); f != nil {
			fams[f[1]] = true
		}
	}
	if main == "" {
		t.Fatalf("the trace has no execve of %s", bin)
	}
	return used, fams
}
