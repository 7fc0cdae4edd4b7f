package gateway

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/synguard/synguard/internal/nstest"
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
