package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockDir holds the lock of each network namespace's one synguard.
const DefaultLockDir = "/run/synguard"

// instanceLock is held while a gateway runs, one per network namespace:
// a second synguard would remove the first one's rules as leftovers of a
// crash and leave it running unprotected. The kernel drops the lock with
// the process (and the children it was starting), however it ends, so a
// crash leaves nothing to clean up.
type instanceLock struct {
	f    *os.File
	path string
}

// orphanLockWait bounds how long lockInstance waits for a lock whose
// synguard has exited. A child it forked (iptables-save, say) shares the
// lock until its exec closes it, so a kill -9 can leave the lock held for
// some milliseconds after the process is gone.
const orphanLockWait = 3 * time.Second

// lockInstance takes the lock of the calling thread's network namespace
// in dir, or reports the pid of the synguard that holds it.
func lockInstance(dir string) (*instanceLock, error) {
	return lockInstanceWithin(dir, orphanLockWait)
}

// lockInstanceWithin is lockInstance, waiting up to orphanWait for a lock
// whose writer has exited to be let go.
func lockInstanceWithin(dir string, orphanWait time.Duration) (*instanceLock, error) {
	var ns unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &ns); err != nil {
		return nil, fmt.Errorf("instance lock: network namespace: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("instance lock: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("netns-%d-%d.lock", ns.Dev, ns.Ino))
	deadline := time.Now().Add(orphanWait)
	for {
		l, holder, err := tryLock(path)
		if l != nil || err != nil {
			return l, err
		}
		pid, alive := holderAlive(holder)
		if alive {
			return nil, fmt.Errorf("another synguard (pid %s) is running in this network namespace (lock %s); stop it first",
				holder, path)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("instance lock %s is still held %v after its synguard (pid %d) exited; a process it started may hold it: stop that first",
				path, orphanWait, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tryLock takes the lock at path without waiting. Held by another, it
// returns no lock, no error and the pid its holder wrote there.
func tryLock(path string) (l *instanceLock, holder string, err error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, "", fmt.Errorf("instance lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			text, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, strings.TrimSpace(string(text)), nil
			}
			return nil, "", fmt.Errorf("instance lock %s: %w", path, err)
		}
		// The holder removes the file as it lets go: a lock taken on a
		// file no longer at path is no lock; open it again.
		same, err := samePath(f, path)
		if err != nil {
			f.Close()
			return nil, "", fmt.Errorf("instance lock %s: %w", path, err)
		}
		if same {
			// The pid is for the message a second synguard gives and for
			// telling a live holder from a dead one's children; the lock
			// is the flock, so a failed write costs only those.
			_ = f.Truncate(0)
			_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return &instanceLock{f: f, path: path}, "", nil
		}
		f.Close()
	}
}

// holderAlive reports whether the pid a lock's holder wrote is a running
// process. A pid not yet written, or unreadable, counts as running: only
// a holder known to be gone is waited for.
func holderAlive(holder string) (pid int, alive bool) {
	pid, err := strconv.Atoi(holder)
	if err != nil || pid <= 0 {
		return 0, true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return pid, false
	}
	if err != nil {
		return pid, true
	}
	// A zombie has closed its files already; its state follows the
	// command name's closing parenthesis.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return pid, false
	}
	return pid, true
}

// samePath reports whether f is still the file at path.
func samePath(f *os.File, path string) (bool, error) {
	held, err := f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(held, now), nil
}

// release removes the lock file, so that namespaces that come and go
// leave none behind, and lets the next synguard in.
func (l *instanceLock) release() {
	if l != nil {
		os.Remove(l.path)
		l.f.Close()
	}
}
