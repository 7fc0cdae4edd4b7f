package capture

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/synguard/synguard/packet"
)

// syn builds the SYN the engine would see from src to dst, with the
// options a Linux client sends.
func syn(t testing.TB, src, dst netip.AddrPort, seq uint32) []byte {
	t.Helper()
	b := make([]byte, 128)
	n, err := packet.Build(b, &packet.Segment{
		Src: src, Dst: dst, Seq: seq, Flags: packet.SYN, Window: 64240,
		Options: packet.Options{
			MSS: 1460, HasMSS: true, SACKPermitted: true,
			WindowScale: 7, HasWindowScale: true, HasTimestamps: true, TSVal: seq,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// record is a packet read back from a capture file.
type readBack struct {
	ci   gopacket.CaptureInfo
	data []byte
}

// readPcap reads a capture file back with pcapgo and checks its header.
func readPcap(t *testing.T, path string) []readBack {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if r.LinkType() != layers.LinkTypeRaw {
		t.Fatalf("%s: link type %v, want raw", path, r.LinkType())
	}
	var out []readBack
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s, packet %d: %v", path, len(out), err)
		}
		if ci.CaptureLength > int(r.Snaplen()) {
			t.Fatalf("%s, packet %d: %d bytes, snaplen %d", path, len(out), ci.CaptureLength, r.Snaplen())
		}
		out = append(out, readBack{ci, data})
	}
}

// tcpdump returns the path of tcpdump. Without it a test fails under CI
// and is skipped elsewhere.
func tcpdump(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tcpdump")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("tcpdump: %v", err)
		}
		t.Skip("tcpdump not installed")
	}
	return p
}

// nopCloser is a WriteCloser over a Writer.
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// gateWriter lets the first write through (the file header) and holds
// every later one until open is closed: a disk that stalls.
type gateWriter struct {
	open   chan struct{}
	mu     sync.Mutex
	writes int
	held   chan struct{} // closed once a write is being held
	once   sync.Once
}

func newGateWriter() *gateWriter {
	return &gateWriter{open: make(chan struct{}), held: make(chan struct{})}
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	g.writes++
	first := g.writes == 1
	g.mu.Unlock()
	if !first {
		g.once.Do(func() { close(g.held) })
		<-g.open
	}
	return len(p), nil
}

func (g *gateWriter) Close() error { return nil }

// failWriter fails every write after the first.
type failWriter struct{ writes int }

var errDiskFull = errors.New("disk full")

func (f *failWriter) Write(p []byte) (int, error) {
	if f.writes++; f.writes > 1 {
		return 0, errDiskFull
	}
	return len(p), nil
}

func (f *failWriter) Close() error { return nil }
