package firewall

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RecordDir holds the sysctl records of running gateways, one file per
// network namespace. It is on tmpfs, so records never outlive the boot
// whose namespaces they describe.
const RecordDir = "/run/synguard"

// An Installed remembers in memory the sysctl values Install replaced, and
// a crash (kill -9, OOM, power to the process cut) loses that memory: the
// next run would find synguard's values already set, leave them, and never
// put back the operator's. So Install also writes the replaced values to a
// record file named after the network namespace, and Remove deletes it once
// they are back. The next Install in that namespace adopts a record it
// finds: a sysctl that still holds the value the crashed run set is treated
// as changed by this run, from the value the record says it had, and a
// sysctl this run does not need is put back at once.
//
// Records are kept only for runners that can name their namespace
// (Host); the name is the namespace's cookie (SO_NETNS_COOKIE), which the
// kernel never reuses within a boot, so a record cannot be mistaken for
// that of a later namespace.

// sysctlRecorder is a Runner whose namespace has a record file.
type sysctlRecorder interface {
	recordPath() (string, error)
}

// recordPath names the record of the calling thread's namespace.
func (Host) recordPath() (string, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return "", fmt.Errorf("network namespace cookie: %w", err)
	}
	return filepath.Join(RecordDir, fmt.Sprintf("sysctl-netns-%d.json", cookie)), nil
}

// recordedSysctl is one entry of a record file.
type recordedSysctl struct {
	Name string `json:"name"`
	Old  string `json:"old"` // the value before synguard
	Set  string `json:"set"` // the value synguard set
}

// readRecord returns the record a crashed run left in r's namespace, and
// its path ("" when r keeps none). A missing or unreadable record is no
// record: the worst that follows is the behaviour without records.
func readRecord(r Runner) (string, map[string]recordedSysctl) {
	rec, ok := r.(sysctlRecorder)
	if !ok {
		return "", nil
	}
	path, err := rec.recordPath()
	if err != nil {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return path, nil
	}
	var entries []recordedSysctl
	if json.Unmarshal(b, &entries) != nil {
		return path, nil
	}
	out := make(map[string]recordedSysctl, len(entries))
	for _, e := range entries {
		out[e.Name] = e
	}
	return path, out
}

// writeRecord replaces the record at path with changes, atomically.
func writeRecord(path string, changes []sysctlChange) error {
	entries := make([]recordedSysctl, len(changes))
	for k, c := range changes {
		entries[k] = recordedSysctl{Name: c.name, Old: c.old, Set: c.set}
	}
	b, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// removeRecord deletes the record at path, if any.
func removeRecord(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
