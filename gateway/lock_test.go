package gateway

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
)

// TestOneInstancePerNamespace: a second lock in the same namespace is
// refused with the holder's pid; another namespace has a lock of its own;
// a released lock can be taken again.
func TestOneInstancePerNamespace(t *testing.T) {
	dir := t.TempDir()
	first, err := lockInstance(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockInstance(dir)
	if want := fmt.Sprintf("another synguard (pid %d) is running in this network namespace", os.Getpid()); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second lock: %v, want an error containing %q", err, want)
	}
	if err := nstest.New(t, "sggw-lock").Do(func() error {
		other, err := lockInstance(dir)
		other.release()
		return err
	}); err != nil {
		t.Fatalf("a lock in another namespace: %v", err)
	}
	first.release()
	again, err := lockInstance(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.release()
	// Released, a lock leaves no file behind: namespaces come and go.
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("files left after release: %v", left)
	}
}

// TestOpenRefusedByTheLock: open fails before it changes anything when
// another synguard holds the namespace, and a failed open cleans up what
// it made (it used to close a nil gateway).
func TestOpenRefusedByTheLock(t *testing.T) {
	ns := nstest.New(t, "sggw-lock")
	cfg := lifecycleConfig()
	cfg.LockDir = t.TempDir()
	err := ns.Do(func() error {
		held, err := lockInstance(cfg.LockDir)
		if err != nil {
			return err
		}
		defer held.release()
		if g, err := open(cfg); err == nil || g != nil || !strings.Contains(err.Error(), "another synguard") {
			return fmt.Errorf("open with the lock held: %v, %v; want a refusal", g, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rules := iptablesSave(t, ns); strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("a refused open installed rules:\n%s", rules)
	}
}

// TestLockWaitsOutADeadHolder: a lock still held after the synguard that
// wrote it has exited (a child it was starting shares the lock until its
// exec) is waited for and taken once let go; held past the wait, it is
// refused with the dead pid. A live holder is refused at once (above).
func TestLockWaitsOutADeadHolder(t *testing.T) {
	dead := exitedPid(t)
	holdAsDead := func(t *testing.T, dir string) *instanceLock {
		held, err := lockInstance(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(held.path, []byte(fmt.Sprintf("%d\n", dead)), 0o644); err != nil {
			t.Fatal(err)
		}
		return held
	}

	t.Run("let go", func(t *testing.T) {
		dir := t.TempDir()
		held := holdAsDead(t, dir)
		// The file stays where it is, as when a dead synguard's child execs.
		time.AfterFunc(50*time.Millisecond, func() { held.f.Close() })
		l, err := lockInstanceWithin(dir, 10*time.Second)
		if err != nil {
			t.Fatalf("lock left by a dead holder's child: %v, want it taken once let go", err)
		}
		defer l.release()
		if pid, _ := os.ReadFile(l.path); strings.TrimSpace(string(pid)) != fmt.Sprint(os.Getpid()) {
			t.Fatalf("lock file holds %q, want this process's pid", pid)
		}
	})

	t.Run("held on", func(t *testing.T) {
		dir := t.TempDir()
		held := holdAsDead(t, dir)
		defer held.release()
		const wait = 200 * time.Millisecond
		start := time.Now()
		_, err := lockInstanceWithin(dir, wait)
		if want := fmt.Sprintf("after its synguard (pid %d) exited", dead); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("lock held on after its holder exited: %v, want an error containing %q", err, want)
		}
		if took := time.Since(start); took < wait {
			t.Fatalf("refused after %v, before the %v wait", took, wait)
		}
	})
}

// TestHolderAlive: only a holder known to be gone (no such process, or a
// zombie, whose files are closed) is waited for.
func TestHolderAlive(t *testing.T) {
	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer zombie.Wait()
	zpid := zombie.Process.Pid
	poll.Must(t, 5*time.Second, "the child never became a zombie", func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", zpid))
		return err == nil && strings.Contains(string(stat), ") Z ")
	})
	for _, tc := range []struct {
		holder string
		alive  bool
	}{
		{"", true}, // locked, pid not written yet
		{"not a pid", true},
		{"0", true},
		{fmt.Sprint(os.Getpid()), true},
		{fmt.Sprint(exitedPid(t)), false},
		{fmt.Sprint(zpid), false},
	} {
		if _, alive := holderAlive(tc.holder); alive != tc.alive {
			t.Errorf("holderAlive(%q) = %v, want %v", tc.holder, alive, tc.alive)
		}
	}
}

// exitedPid returns the pid of a child that has exited and been reaped.
func exitedPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}
