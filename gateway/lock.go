package gateway

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultLockDir holds the lock of each network namespace's one synguard.
const DefaultLockDir = "/run/synguard"

// instanceLock is held while a gateway runs, one per network namespace:
// a second synguard would remove the first one's rules as leftovers of a
// crash and leave it running unprotected. The kernel drops the lock with
// the process, however it ends, so a crash leaves nothing to clean up.
type instanceLock struct {
	f    *os.File
	path string
}

// lockInstance takes the lock of the calling thread's network namespace
// in dir, or reports the pid of the synguard that holds it.
func lockInstance(dir string) (*instanceLock, error) {
	var ns unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &ns); err != nil {
		return nil, fmt.Errorf("instance lock: network namespace: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("instance lock: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("netns-%d-%d.lock", ns.Dev, ns.Ino))
	var (
		f   *os.File
		err error
	)
	for {
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
			return nil, fmt.Errorf("instance lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			holder, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("another synguard (pid %s) is running in this network namespace (lock %s); stop it first",
					strings.TrimSpace(string(holder)), path)
			}
			return nil, fmt.Errorf("instance lock %s: %w", path, err)
		}
		// The holder removes the file as it lets go: a lock taken on a
		// file no longer at path is no lock; open it again.
		if same, err := samePath(f, path); err != nil || same {
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("instance lock %s: %w", path, err)
			}
			break
		}
		f.Close()
	}
	// The pid is for the message a second synguard gives; the lock is
	// the flock, so a failed write costs only that message its pid.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &instanceLock{f: f, path: path}, nil
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
