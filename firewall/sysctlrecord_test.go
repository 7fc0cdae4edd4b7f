package firewall

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// memRunner keeps sysctls in memory and a record file in a temporary
// directory; its iptables commands do nothing (an empty ruleset saved, any
// input restored), so Install's sysctl handling runs without root.
type memRunner struct {
	sysctls map[string]string
	path    string
}

func (m *memRunner) Command(ctx context.Context, _ string, _ ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "true")
}

func (m *memRunner) ReadSysctl(name string) (string, error) {
	v, ok := m.sysctls[name]
	if !ok {
		return "", fs.ErrNotExist
	}
	return v, nil
}

func (m *memRunner) WriteSysctl(name, value string) error {
	m.sysctls[name] = value
	return nil
}

func (m *memRunner) recordPath() (string, error) { return m.path, nil }

const (
	loose = "net.netfilter.nf_conntrack_tcp_loose"
	fwd4  = "net.ipv4.ip_forward"
	fwd6  = "net.ipv6.conf.all.forwarding"
)

func newMemRunner(t *testing.T) *memRunner {
	return &memRunner{
		sysctls: map[string]string{loose: "1", fwd4: "0", fwd6: "0"},
		path:    filepath.Join(t.TempDir(), "synguard", "sysctl.json"),
	}
}

func (m *memRunner) want(t *testing.T, want map[string]string) {
	t.Helper()
	if diff := cmp.Diff(want, m.sysctls); diff != "" {
		t.Fatalf("sysctls (-want +got):\n%s", diff)
	}
}

func (m *memRunner) recordExists() bool {
	_, err := os.Stat(m.path)
	return err == nil
}

func TestSysctlRecordSurvivesCrash(t *testing.T) {
	ctx := context.Background()
	original := map[string]string{loose: "1", fwd4: "0", fwd6: "0"}

	t.Run("clean stop leaves no record", func(t *testing.T) {
		m := newMemRunner(t)
		c := base("203.0.113.10:80")
		c.Runner = m
		inst, err := Install(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if !m.recordExists() {
			t.Fatal("no record while running")
		}
		if err := inst.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		m.want(t, original)
		if m.recordExists() {
			t.Fatal("record left after Remove")
		}
	})

	t.Run("restart after crash restores the originals", func(t *testing.T) {
		m := newMemRunner(t)
		c := base("203.0.113.10:80", "[2001:db8:b::2]:80")
		c.Runner = m
		if _, err := Install(ctx, c); err != nil { // dropped: the crash
			t.Fatal(err)
		}
		m.want(t, map[string]string{loose: "0", fwd4: "1", fwd6: "1"})

		// The next run protects only the IPv4 service: it adopts what it
		// needs and puts IPv6 forwarding back at once.
		c = base("203.0.113.10:80")
		c.Runner = m
		inst, err := Install(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		m.want(t, map[string]string{loose: "0", fwd4: "1", fwd6: "0"})
		if err := inst.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		m.want(t, original)
		if m.recordExists() {
			t.Fatal("record left after Remove")
		}
	})

	t.Run("a value changed since the crash is not adopted", func(t *testing.T) {
		m := newMemRunner(t)
		c := base("203.0.113.10:80")
		c.Runner = m
		if _, err := Install(ctx, c); err != nil {
			t.Fatal(err)
		}
		// Since the crash the operator set loose by hand: that value is
		// theirs now and is the one that comes back. Forwarding still
		// holds synguard's value and gets the original back.
		m.sysctls[loose] = "2"
		inst, err := Install(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		m.want(t, map[string]string{loose: "2", fwd4: "0", fwd6: "0"})
	})

	t.Run("unreadable record is ignored", func(t *testing.T) {
		m := newMemRunner(t)
		if err := os.MkdirAll(filepath.Dir(m.path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(m.path, []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := base("203.0.113.10:80")
		c.Runner = m
		inst, err := Install(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		m.want(t, original)
		if _, err := os.Stat(m.path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("record after Remove: %v", err)
		}
	})
}
