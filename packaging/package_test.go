package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/synguard/synguard/internal/roottest"
)

// debArch is Debian's name for each Go architecture the Makefile maps.
var debArch = map[string]string{"386": "i386", "arm": "armhf", "ppc64le": "ppc64el", "mips64le": "mips64el", "mipsle": "mipsel"}

// built is `make deb`'s package: its path and its version.
type built struct{ path, version string }

// makeDeb runs `make deb` in the repository with extra make arguments
// and returns the package it says it created.
func makeDeb(t *testing.T, args ...string) built {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", "..", "deb"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^created package: (dist/(synguard_([^_]+)_([^_]+)\.deb))$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("make deb named no package:\n%s", out)
	}
	path, version, arch := filepath.Join("..", string(m[1])), string(m[3]), string(m[4])
	want := runtime.GOARCH
	if a, ok := debArch[want]; ok {
		want = a
	}
	if arch != want {
		t.Fatalf("%s: architecture %s, want %s (Debian's name for %s)", m[2], arch, want, runtime.GOARCH)
	}
	if got := strings.TrimSpace(run(t, "dpkg-deb", "--field", path, "Version")); got != version {
		t.Fatalf("%s says version %q, its name %q", m[2], got, version)
	}
	return built{path, version}
}

// run runs a command and returns its standard output; a failure fails t.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := output(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &cmdError{err, stdout.String() + stderr.String()}
	}
	return stdout.String(), nil
}

type cmdError struct {
	err error
	out string
}

func (e *cmdError) Error() string { return e.err.Error() + ":\n" + e.out }

// packageState is dpkg's status of synguard ("" when dpkg knows none).
func packageState() string {
	out, err := output("dpkg-query", "--show", "--showformat=${Status}", "synguard")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// installed reports whether dpkg has synguard's files or conffiles.
func installed() bool {
	s := packageState()
	return s != "" && !strings.HasSuffix(s, " not-installed")
}

// mode returns path's permission bits, owner and size; ok false when it
// does not exist.
func mode(t *testing.T, path string) (perm os.FileMode, uid uint32, size int64, ok bool) {
	t.Helper()
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0, 0, 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm(), statUID(fi), fi.Size(), true
}

// TestDebianPackage builds the package with `make deb`, installs it,
// checks its files, modes, conffile and unit (systemd-analyze verify and
// security), runs the packaged binary on the packaged configuration,
// upgrades it with the configuration edited, then purges it and checks
// that nothing it installed or made is left. It refuses to run on a
// machine that has a synguard package of its own.
func TestDebianPackage(t *testing.T) {
	roottest.Require(t)
	for _, tool := range []string{"make", "dpkg", "dpkg-deb", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the package test needs it (.ci/run installs it)", tool)
		}
	}
	if installed() {
		t.Fatalf("a synguard package is already installed on this machine (dpkg: %q); this test installs and purges its own "+
			"and will not touch that one. Remove it with 'dpkg --purge synguard' to run the test.", packageState())
	}
	if _, err := os.Stat("/etc/synguard"); err == nil {
		t.Fatal("/etc/synguard exists with no synguard package installed; this test would purge it, and will not: move it away to run the test")
	}

	pkg := makeDeb(t)
	t.Cleanup(func() {
		if installed() {
			if out, err := output("dpkg", "--purge", "synguard"); err != nil {
				t.Errorf("cleanup: dpkg --purge synguard: %v\n%s", err, out)
			}
		}
	})
	run(t, "dpkg", "--install", pkg.path)

	// Files, owners and modes.
	for _, f := range []struct {
		path string
		perm os.FileMode
	}{
		{"/usr/sbin/synguard", 0o755},
		{"/usr/lib/systemd/system/synguard.service", 0o644},
		{"/etc/synguard", 0o755},
		{"/etc/synguard/synguard.yaml", 0o644},
		{"/etc/synguard/cookie.key", 0o600}, // made by postinst
		{"/usr/share/doc/synguard/README.md", 0o644},
		{"/usr/share/doc/synguard/copyright", 0o644},
		{"/usr/share/doc/synguard/docs/architecture.md", 0o644},
		{"/usr/share/doc/synguard/docs/events.md", 0o644},
	} {
		perm, uid, _, ok := mode(t, f.path)
		switch {
		case !ok:
			t.Errorf("%s: not installed", f.path)
		case perm != f.perm || uid != 0:
			t.Errorf("%s: mode %v owner %d, want %v owner root", f.path, perm, uid, f.perm)
		}
	}
	if _, _, size, _ := mode(t, "/etc/synguard/cookie.key"); size != 32 {
		t.Errorf("/etc/synguard/cookie.key: %d bytes, want a 32-byte key", size)
	}
	key := readFile(t, "/etc/synguard/cookie.key")
	if conf := run(t, "dpkg-query", "--show", "--showformat=${Conffiles}", "synguard"); !strings.Contains(conf, "/etc/synguard/synguard.yaml ") {
		t.Errorf("/etc/synguard/synguard.yaml is not a conffile; conffiles: %q", conf)
	}
	if dep := run(t, "dpkg-query", "--show", "--showformat=${Depends}", "synguard"); !regexp.MustCompile(`\biptables\b`).MatchString(dep) {
		t.Errorf("Depends: %q, want iptables (synguard runs iptables-restore)", dep)
	}
	if v := run(t, "/usr/sbin/synguard", "version"); !strings.HasPrefix(v, "synguard "+pkg.version+" ") {
		t.Errorf("synguard version says %q, want the package's version %s", v, pkg.version)
	}

	// Installing enables and starts nothing.
	if links, _ := filepath.Glob("/etc/systemd/system/*.wants/synguard.service"); len(links) > 0 {
		t.Errorf("installing enabled the unit: %v", links)
	}

	// The installed unit, as systemd would load it.
	if out, err := output("systemd-analyze", "verify", "/usr/lib/systemd/system/synguard.service"); err != nil {
		t.Errorf("systemd-analyze verify: %v", err)
	} else if strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify warns:\n%s", out)
	}
	sec, _ := output("systemd-analyze", "security", "--offline=yes", "/usr/lib/systemd/system/synguard.service")
	m := regexp.MustCompile(`Overall exposure level for synguard\.service: ([0-9.]+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Errorf("systemd-analyze security gave no exposure level:\n%s", sec)
	} else if level, _ := strconv.ParseFloat(m[1], 64); level > 3.0 {
		t.Errorf("exposure level %v, want at most 3.0 (the unit's hardening weakened?):\n%s", level, sec)
	}

	// The packaged configuration is valid as shipped.
	if out, err := output("/usr/sbin/synguard", "check", "--config", "/etc/synguard/synguard.yaml"); err != nil {
		t.Errorf("synguard check on the packaged configuration: %v\n%s", err, out)
	}

	// An upgrade keeps the operator's configuration and key.
	edited := readFile(t, "/etc/synguard/synguard.yaml") + "# edited by the operator\n"
	if err := os.WriteFile("/etc/synguard/synguard.yaml", []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	next := makeDeb(t, "VERSION="+pkg.version+"+1")
	t.Cleanup(func() { os.Remove(next.path) })
	run(t, "dpkg", "--install", next.path)
	if v := strings.TrimSpace(run(t, "dpkg-query", "--show", "--showformat=${Version}", "synguard")); v != next.version {
		t.Errorf("after the upgrade dpkg has version %s, want %s", v, next.version)
	}
	if got := readFile(t, "/etc/synguard/synguard.yaml"); got != edited {
		t.Errorf("the upgrade replaced the edited configuration; it reads:\n%s", got)
	}
	if got := readFile(t, "/etc/synguard/cookie.key"); got != key {
		t.Error("the upgrade replaced the cookie key")
	}

	// Purge: nothing left.
	files := strings.Fields(run(t, "dpkg-query", "--listfiles", "synguard"))
	run(t, "dpkg", "--purge", "synguard")
	if installed() {
		t.Fatalf("after dpkg --purge, dpkg still has synguard: %q", packageState())
	}
	left := map[string]bool{}
	for _, f := range append(files, "/etc/synguard", "/etc/synguard/cookie.key") {
		if left[f] {
			continue
		}
		if _, err := os.Lstat(f); err != nil {
			continue
		}
		// A directory other packages share stays.
		if _, err := output("dpkg-query", "--search", f); err == nil {
			continue
		}
		left[f] = true
		t.Errorf("%s is left after the purge", f)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
