package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// withUmask runs the test under umask 022, as a service usually runs.
func withUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestOpenDir(t *testing.T) {
	withUmask(t)
	root := t.TempDir()
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(root, "a", "captures")
	d, err := OpenDir(path, DirConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != DirMode || d.Path() != path {
		t.Fatalf("created %v, %v", fi.Mode(), err)
	}
	// An existing directory keeps its mode.
	if err := os.Chmod(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDir(path, DirConfig{}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o700 {
		t.Fatalf("existing directory's mode changed to %v", fi.Mode())
	}

	bad := []struct {
		path string
		cfg  DirConfig
		want string
	}{
		{file, DirConfig{}, "not a directory"},
		{filepath.Join(file, "sub"), DirConfig{}, "not a directory"},
		{"", DirConfig{}, "no path"},
		{path, DirConfig{MaxFiles: -1}, "max files"},
		{path, DirConfig{MaxBytes: 1 << 20, Sampler: Config{MaxBytes: 2 << 20}}, "below one file's"},
		{path, DirConfig{Sampler: Config{Snaplen: 1}}, "snaplen"},
	}
	for _, tt := range bad {
		_, err := OpenDir(tt.path, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("OpenDir(%q, %+v) = %v, want an error saying %q", tt.path, tt.cfg, err, tt.want)
		}
	}
}

// TestOpenDirReadOnly: a directory on a read-only mount is refused at
// once, not at the first attack.
func TestOpenDirReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	_, err := OpenDir(dir, DirConfig{})
	if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), "cannot create files") {
		t.Fatalf("OpenDir on a read-only mount: %v", err)
	}
}

// captureN starts and closes one capture of n SYNs.
func captureN(t *testing.T, d *Dir, service string, start time.Time, n int) Result {
	t.Helper()
	s, err := d.Start(service, start)
	if err != nil {
		t.Fatal(err)
	}
	p := syn(t, client(1, false), server4, 1)
	for range n {
		s.Offer(p, start)
	}
	res, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// names lists the directory.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestFileNames(t *testing.T) {
	withUmask(t)
	dir := t.TempDir()
	d, err := OpenDir(dir, DirConfig{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 1, 13, 4, 5, 678_900_000, time.FixedZone("CET", 3600))
	r1 := captureN(t, d, "[2001:db8::10]:443", start, 1)
	r2 := captureN(t, d, "[2001:db8::10]:443", start, 1)
	r3 := captureN(t, d, "192.0.2.10:80", start, 1)
	want := []string{
		"synguard-2001_db8__10_443-20260301T120405.678Z.pcap",
		"synguard-2001_db8__10_443-20260301T120405.678Z-2.pcap",
		"synguard-192.0.2.10_80-20260301T120405.678Z.pcap",
	}
	for i, r := range []Result{r1, r2, r3} {
		if r.Path != filepath.Join(dir, want[i]) {
			t.Errorf("capture %d: %s, want %s", i, r.Path, want[i])
		}
		if fi, err := os.Stat(r.Path); err != nil || fi.Mode().Perm() != FileMode {
			t.Errorf("capture %d: %v, %v", i, fi.Mode(), err)
		}
	}
}

// writeFile writes a file into dir, pointing out a failure.
func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRotation: the newest captures are kept within the file count, and no
// file this package did not write is touched, even one named like its own.
func TestRotation(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	d, err := OpenDir(dir, DirConfig{MaxFiles: 3})
	if err != nil {
		t.Fatal(err)
	}
	// A capture of ours, copied elsewhere, for a link to point at.
	ours := captureN(t, d, "old", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), 1)
	theirs, err := os.ReadFile(ours.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(ours.Path, filepath.Join(elsewhere, "kept.pcap")); err != nil {
		t.Fatal(err)
	}
	ethernet := slices.Clone(theirs)
	ethernet[20] = 1 // LINKTYPE_ETHERNET
	nano := slices.Clone(theirs)
	binary.LittleEndian.PutUint32(nano, 0xa1b23c4d) // a nanosecond pcap: not what a Sampler writes
	foreign := map[string][]byte{
		"notes.txt":                                []byte("operator's notes"),
		"synguard-web-19990101T000000.000Z.pcap":   []byte("not a pcap file at all, but named like one"),
		"synguard-eth-19990101T000000.000Z.pcap":   ethernet,
		"synguard-nano-19990101T000000.000Z.pcap":  nano,
		"synguard-short-19990101T000000.000Z.pcap": theirs[:10],
		"tcpdump.pcap":                             theirs,
	}
	for name, data := range foreign {
		writeFile(t, dir, name, data)
	}
	link := "synguard-link-19990101T000000.000Z.pcap"
	if err := os.Symlink(filepath.Join(elsewhere, "kept.pcap"), filepath.Join(dir, link)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "synguard-sub-19990101T000000.000Z.pcap"), 0o755); err != nil {
		t.Fatal(err)
	}

	var made []string
	for i := range 6 {
		// Later attacks on services whose names sort first: rotation goes
		// by start time, not by name.
		res := captureN(t, d, fmt.Sprintf("svc-%c", 'f'-i), t0.Add(time.Duration(i)*time.Hour), 10)
		made = append(made, filepath.Base(res.Path))
	}
	got := names(t, dir)
	for _, m := range made[:3] {
		if slices.Contains(got, m) {
			t.Errorf("%s, among the oldest, was kept", m)
		}
	}
	for _, m := range made[3:] {
		if !slices.Contains(got, m) {
			t.Errorf("%s, among the newest, is gone", m)
		}
	}
	for name, data := range foreign {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(b, data) {
			t.Errorf("foreign file %s: %v", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, link)); err != nil {
		t.Errorf("link: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(elsewhere, "kept.pcap")); err != nil || !bytes.Equal(b, theirs) {
		t.Errorf("the link's target: %v", err)
	}
	if want := len(foreign) + 2 + 3; len(got) != want {
		t.Errorf("directory holds %d entries, want %d: %v", len(got), want, got)
	}
}

// TestRotationBySize: the directory's captures stay within its byte bound,
// counting a capture being written at its own bound; when captures being
// written take it all, Start says so.
func TestRotationBySize(t *testing.T) {
	dir := t.TempDir()
	perFile := int64(fileHeaderLen + 20*(recordHeaderLen+DefaultSnaplen))
	d, err := OpenDir(dir, DirConfig{MaxBytes: 3 * perFile, Sampler: Config{MaxBytes: perFile}})
	if err != nil {
		t.Fatal(err)
	}
	long := append(syn(t, client(1, false), server4, 1), make([]byte, 200)...)
	for i := range 5 {
		s, err := d.Start("svc", t0.Add(time.Duration(i)*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		for range 100 {
			s.Offer(long, t0)
		}
		// While s is written, the finished files and its bound fit.
		var used int64
		for _, n := range names(t, dir) {
			if fi, err := os.Stat(filepath.Join(dir, n)); err == nil && n != filepath.Base(s.Path()) {
				used += fi.Size()
			}
		}
		if used+perFile > 3*perFile {
			t.Fatalf("capture %d: %d bytes finished with %d being written, bound %d", i, used, perFile, 3*perFile)
		}
		res, err := s.Close()
		if err != nil || res.Bytes != perFile {
			t.Fatalf("capture %d: %+v, %v; want a full file", i, res, err)
		}
	}
	if n := len(names(t, dir)); n != 3 {
		t.Fatalf("%d files, want 3", n)
	}

	// Three captures at once take the whole budget.
	var open []*Sampler
	for i := range 3 {
		s, err := d.Start("busy", t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
	}
	if _, err := d.Start("busy", t0.Add(time.Hour)); !errors.Is(err, ErrFull) {
		t.Fatalf("fourth capture at once: %v, want ErrFull", err)
	}
	open[0].Close()
	s, err := d.Start("busy", t0.Add(time.Hour))
	if err != nil {
		t.Fatalf("after one closed: %v", err)
	}
	s.Close()
	for _, o := range open {
		o.Close()
	}
}

func TestSafeName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.10:80", "192.0.2.10_80"},
		{"[2001:db8::10]:443", "2001_db8__10_443"},
		{"[fe80::1%eth0]:22", "fe80__1_eth0_22"},
		{"web-frontend", "web-frontend"},
		{"../../etc/passwd", ".._.._etc_passwd"},
		{"", "service"},
		{"[]", "service"},
		{"ünïcode", "__n__code"},
		{strings.Repeat("a", 100), strings.Repeat("a", 64)},
	}
	for _, tt := range tests {
		if got := SafeName(tt.in); got != tt.want {
			t.Errorf("SafeName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzSafeName: any service name gives a file name Dir recognizes as its
// own, in one directory entry.
func FuzzSafeName(f *testing.F) {
	for _, s := range []string{"192.0.2.10:80", "[2001:db8::10]:443", "/", "..", "\x00", "a b\nc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, service string) {
		s := SafeName(service)
		if s == "" || len(s) > 64 || strings.ContainsAny(s, "/\x00") {
			t.Fatalf("SafeName(%q) = %q", service, s)
		}
		name := "synguard-" + s + "-" + t0.Format(timeLayout) + ".pcap"
		if !fileName.MatchString(name) || filepath.Base(name) != name {
			t.Fatalf("SafeName(%q) gives %q, which Dir does not recognize", service, name)
		}
	})
}
