package capture

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// Defaults of DirConfig.
const (
	DefaultMaxFiles = 100
	DefaultDirBytes = 256 << 20
)

// File and directory modes: captures hold addresses of clients, for the
// operator's group at most.
const (
	DirMode  = 0o750
	FileMode = 0o640
)

// DirConfig bounds a capture directory. The zero DirConfig takes the
// defaults.
type DirConfig struct {
	// MaxFiles bounds the number of capture files (DefaultMaxFiles).
	MaxFiles int
	// MaxBytes bounds their total size (DefaultDirBytes). A capture being
	// written counts as its Sampler.MaxBytes.
	MaxBytes int64
	// Sampler bounds each file.
	Sampler Config
}

// ErrFull is returned by Start when the captures being written take the
// whole budget, so that no old file can make room.
var ErrFull = errors.New("capture: the directory's budget is taken by captures being written")

// A Dir is a directory of capture files, one per attack, named
// synguard-SERVICE-START.pcap. It deletes its oldest files to keep within
// its bounds, and touches no file it did not make.
type Dir struct {
	path string
	cfg  DirConfig

	mu     sync.Mutex
	active map[string]bool // names of files being written
}

// OpenDir opens the capture directory path, creating it (mode DirMode) if
// it does not exist, and checks that it is a directory this process can
// write to.
func OpenDir(path string, cfg DirConfig) (*Dir, error) {
	if cfg.MaxFiles == 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultDirBytes
	}
	sc, err := cfg.Sampler.withDefaults()
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	case cfg.MaxFiles < 1:
		return nil, fmt.Errorf("%w: max files %d", ErrConfig, cfg.MaxFiles)
	case cfg.MaxBytes < sc.MaxBytes:
		return nil, fmt.Errorf("%w: directory bound %d below one file's %d", ErrConfig, cfg.MaxBytes, sc.MaxBytes)
	case path == "":
		return nil, errors.New("capture directory: no path")
	}
	cfg.Sampler = sc
	if err := os.MkdirAll(path, DirMode); err != nil {
		return nil, fmt.Errorf("capture directory: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("capture directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("capture directory %s: not a directory", path)
	}
	if err := unix.Access(path, unix.W_OK|unix.X_OK); err != nil {
		return nil, fmt.Errorf("capture directory %s: cannot create files in it: %w", path, err)
	}
	return &Dir{path: path, cfg: cfg, active: map[string]bool{}}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Start makes room and creates the capture file of an attack on service
// that began at start, and returns its Sampler.
func (d *Dir) Start(service string, start time.Time) (*Sampler, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.rotate(); err != nil {
		return nil, err
	}
	base := "synguard-" + SafeName(service) + "-" + start.UTC().Format(timeLayout)
	var f *os.File
	var name string
	var err error
	for i := 1; i <= 100; i++ {
		name = base + ".pcap"
		if i > 1 {
			name = fmt.Sprintf("%s-%d.pcap", base, i)
		}
		f, err = os.OpenFile(filepath.Join(d.path, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("capture file: %w", err)
	}
	s, err := NewSampler(f, d.cfg.Sampler)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	s.path = f.Name()
	d.active[name] = true
	s.onClose = func(Result) {
		d.mu.Lock()
		delete(d.active, name)
		d.mu.Unlock()
	}
	return s, nil
}

const timeLayout = "20060102T150405.000Z"

// fileName matches the names Start gives.
var fileName = regexp.MustCompile(`^synguard-[A-Za-z0-9._-]+-(\d{8}T\d{6}\.\d{3}Z)(-\d+)?\.pcap$`)

// capture is a finished capture file found in the directory.
type capture struct {
	name  string
	start time.Time
	size  int64
}

// rotate deletes the oldest finished captures until one more file fits
// both bounds.
func (d *Dir) rotate() error {
	old, err := d.captures()
	if err != nil {
		return err
	}
	var used int64
	for _, c := range old {
		used += c.size
	}
	files := len(old) + len(d.active) + 1
	used += int64(len(d.active)+1) * d.cfg.Sampler.MaxBytes
	for files > d.cfg.MaxFiles || used > d.cfg.MaxBytes {
		if len(old) == 0 {
			return fmt.Errorf("%w (%s: %d being written)", ErrFull, d.path, len(d.active))
		}
		if err := os.Remove(filepath.Join(d.path, old[0].name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("capture directory: rotating out: %w", err)
		}
		files--
		used -= old[0].size
		old = old[1:]
	}
	return nil
}

// captures lists the finished capture files, oldest first. A file counts
// only if its name is one Start gives, it is a regular file (not a link)
// and it begins with the header a Sampler writes: anything else is not
// this package's to delete.
func (d *Dir) captures() ([]capture, error) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("capture directory: %w", err)
	}
	var out []capture
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() || d.active[e.Name()] {
			continue
		}
		start, err := time.Parse(timeLayout, m[1])
		if err != nil {
			continue
		}
		size, ok := d.ours(e.Name())
		if !ok {
			continue
		}
		out = append(out, capture{name: e.Name(), start: start, size: size})
	}
	slices.SortFunc(out, func(a, b capture) int {
		return cmp.Or(a.start.Compare(b.start), cmp.Compare(a.name, b.name))
	})
	return out, nil
}

// ours reports whether the file begins with a Sampler's pcap header, and
// its size.
func (d *Dir) ours(name string) (int64, bool) {
	f, err := os.OpenFile(filepath.Join(d.path, name), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	var h [fileHeaderLen]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, false
	}
	var want [8]byte
	binary.LittleEndian.PutUint32(want[:4], 0xa1b2c3d4) // microsecond pcap, as pcapgo writes it
	binary.LittleEndian.PutUint16(want[4:6], 2)
	binary.LittleEndian.PutUint16(want[6:8], 4)
	if !bytes.Equal(h[:8], want[:]) || binary.LittleEndian.Uint32(h[20:]) != uint32(layers.LinkTypeRaw) {
		return 0, false
	}
	return fi.Size(), true
}

// SafeName makes a service name, such as "192.0.2.10:80" or
// "[2001:db8::10]:443", fit in a file name: letters, digits, '.' and '-'
// are kept, brackets dropped, anything else becomes '_', and the result
// is at most 64 bytes ("192.0.2.10_80", "2001_db8__10_443").
func SafeName(service string) string {
	b := make([]byte, 0, min(len(service), 64))
	for i := 0; i < len(service) && len(b) < 64; i++ {
		switch c := service[i]; {
		case c == '[' || c == ']':
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	if len(b) == 0 {
		return "service"
	}
	return string(b)
}
