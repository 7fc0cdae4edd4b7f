package capture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/synguard/synguard/internal/poll"
)

var (
	server4 = netip.MustParseAddrPort("192.0.2.10:80")
	server6 = netip.MustParseAddrPort("[2001:db8::10]:443")
	t0      = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func client(i int, v6 bool) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 14: byte(i >> 8), 15: byte(i)}), uint16(40000+i))
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), uint16(40000+i))
}

func newSampler(t *testing.T, w io.WriteCloser, cfg Config) *Sampler {
	t.Helper()
	s, err := NewSampler(w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func checkCounts(t *testing.T, c Counts) {
	t.Helper()
	if c.Offered != c.Written+c.Skipped+c.OverSize+c.Dropped {
		t.Errorf("counts do not add up: %+v", c)
	}
}

// TestFileReadBack offers IPv4 and IPv6 SYNs and a long packet, and reads
// the file back with pcapgo, decoding each packet with gopacket's layers,
// and with tcpdump.
func TestFileReadBack(t *testing.T) {
	d, err := OpenDir(t.TempDir(), DirConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Start(server4.String(), t0)
	if err != nil {
		t.Fatal(err)
	}
	type sent struct {
		src, dst netip.AddrPort
		seq      uint32
		ts       time.Time
		length   int
	}
	var want []sent
	for i := range 40 {
		v6 := i%2 == 1
		dst := server4
		if v6 {
			dst = server6
		}
		src := client(i, v6)
		p := syn(t, src, dst, uint32(1000+i))
		ts := t0.Add(time.Duration(i) * 1500 * time.Microsecond)
		if !s.Offer(p, ts) {
			t.Fatalf("packet %d refused", i)
		}
		want = append(want, sent{src, dst, uint32(1000 + i), ts, len(p)})
	}
	// A SYN with 400 bytes of data: kept cut to the snaplen.
	long := append(syn(t, client(99, false), server4, 7), make([]byte, 400)...)
	long[2], long[3] = byte(len(long)>>8), byte(len(long))
	if !s.Offer(long, t0.Add(time.Second)) {
		t.Fatal("long packet refused")
	}
	want = append(want, sent{client(99, false), server4, 7, t0.Add(time.Second), len(long)})

	res, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantCounts := Counts{Offered: 41, Written: 41}
	if res.Counts != wantCounts || res.Path != s.Path() {
		t.Fatalf("Close() = %+v, want counts %+v, path %s", res, wantCounts, s.Path())
	}
	if fi, err := os.Stat(res.Path); err != nil || fi.Size() != res.Bytes || fi.Mode().Perm()&^FileMode != 0 {
		t.Fatalf("file: %v, %v; result says %d bytes", fi, err, res.Bytes)
	}

	got := readPcap(t, res.Path)
	if len(got) != len(want) {
		t.Fatalf("%d packets read back, %d offered", len(got), len(want))
	}
	for i, g := range got {
		w := want[i]
		if !g.ci.Timestamp.Equal(w.ts) || g.ci.Length != w.length || g.ci.CaptureLength != min(w.length, DefaultSnaplen) {
			t.Errorf("packet %d: %+v, want ts %v, length %d", i, g.ci, w.ts, w.length)
		}
		pkt := gopacket.NewPacket(g.data, layers.LinkTypeRaw, gopacket.Default)
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || pkt.NetworkLayer() == nil {
			t.Errorf("packet %d: no TCP over IP: %v", i, pkt)
			continue
		}
		src, _ := netip.AddrFromSlice(pkt.NetworkLayer().NetworkFlow().Src().Raw())
		dst, _ := netip.AddrFromSlice(pkt.NetworkLayer().NetworkFlow().Dst().Raw())
		if src != w.src.Addr() || dst != w.dst.Addr() || uint16(tcp.SrcPort) != w.src.Port() || uint16(tcp.DstPort) != w.dst.Port() {
			t.Errorf("packet %d: %v:%d > %v:%d, want %v > %v", i, src, tcp.SrcPort, dst, tcp.DstPort, w.src, w.dst)
		}
		if !tcp.SYN || tcp.ACK || tcp.Seq != w.seq {
			t.Errorf("packet %d: SYN %v ACK %v seq %d, want a SYN, seq %d", i, tcp.SYN, tcp.ACK, tcp.Seq, w.seq)
		}
	}

	out, err := exec.Command(tcpdump(t), "-r", res.Path, "-nn", "-tt").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	var lines []string
	for l := range strings.Lines(string(out)) {
		if !strings.HasPrefix(l, "reading from file") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) != len(want) {
		t.Fatalf("tcpdump shows %d packets, want %d:\n%s", len(lines), len(want), out)
	}
	for i, l := range lines {
		w := want[i]
		family := "IP"
		if w.src.Addr().Is6() {
			family = "IP6"
		}
		seq := fmt.Sprint(w.seq)
		if w.length > 100 { // the long one, with 400 bytes of data
			seq = fmt.Sprintf("%d:%d", w.seq, w.seq+400)
		}
		flow := fmt.Sprintf("%d.%06d %s %s.%d > %s.%d: Flags [S], seq %s,", w.ts.Unix(), w.ts.Nanosecond()/1000,
			family, w.src.Addr(), w.src.Port(), w.dst.Addr(), w.dst.Port(), seq)
		if !strings.HasPrefix(l, flow) {
			t.Errorf("tcpdump line %d:\n%s\nwant it to begin\n%s", i, l, flow)
		}
	}
}

// TestFirstThenTrickle: the first First packets are all kept, then no more
// than Rate a second, by the packets' own timestamps; a burst after a
// silence takes one second's worth at most.
func TestFirstThenTrickle(t *testing.T) {
	const first, rate = 20, 5
	s := newSampler(t, nopCloser{io.Discard}, Config{First: first, Rate: rate})
	p := syn(t, client(1, false), server4, 1)
	kept := func(n int, at func(i int) time.Time) int {
		k := 0
		for i := range n {
			if s.Offer(p, at(i)) {
				k++
			}
		}
		return k
	}
	// The flood's first instant: First kept, the bucket starts empty.
	if k := kept(first+100, func(int) time.Time { return t0 }); k != first {
		t.Fatalf("%d of the first %d kept, want %d", k, first+100, first)
	}
	// 10 s at 1000/s: 5/s of them.
	if k := kept(10_000, func(i int) time.Time { return t0.Add(time.Duration(i+1) * time.Millisecond) }); k < 10*rate-1 || k > 10*rate {
		t.Fatalf("%d kept of 10 s at 1000/s, want %d", k, 10*rate)
	}
	// A minute of silence, then a burst at one instant: one second's worth.
	burst := t0.Add(70 * time.Second)
	if k := kept(1000, func(int) time.Time { return burst }); k != rate {
		t.Fatalf("%d of a burst kept, want %d", k, rate)
	}
	// Timestamps going backwards (writers on several CPUs) earn nothing.
	if k := kept(100, func(i int) time.Time { return burst.Add(-time.Duration(i) * time.Second) }); k != 0 {
		t.Fatalf("%d kept going back in time", k)
	}
	c := s.Counts()
	if want := uint64(first + 100 + 10_000 + 1000 + 100); c.Offered != want {
		t.Fatalf("offered %d, want %d", c.Offered, want)
	}

	none := newSampler(t, nopCloser{io.Discard}, Config{First: 3, Rate: -1})
	for i := range 1000 {
		none.Offer(p, t0.Add(time.Duration(i)*time.Second))
	}
	res, _ := none.Close()
	if res.Counts.Written != 3 || res.Counts.Skipped != 997 {
		t.Fatalf("rate -1: %+v, want 3 written", res.Counts)
	}
}

// TestSizeBound: the file never passes MaxBytes, headers counted; what
// would take it past is counted instead.
func TestSizeBound(t *testing.T) {
	long := append(syn(t, client(1, false), server4, 1), make([]byte, 200)...) // cut to 128
	short := syn(t, client(2, false), server4, 1)                              // under 128
	tiny := []byte{0x45, 0, 0, 4}                                              // 20 bytes with its record header
	size := int64(fileHeaderLen + 10*(recordHeaderLen+DefaultSnaplen) + recordHeaderLen + len(short))
	max := size + recordHeaderLen + int64(len(tiny)) - 1
	var buf bytes.Buffer
	s := newSampler(t, nopCloser{&buf}, Config{MaxBytes: max})
	for range 10 {
		if !s.Offer(long, t0) {
			t.Fatal("a packet that fits was refused")
		}
	}
	if s.Offer(long, t0) {
		t.Fatal("a full-size packet past the bound was kept")
	}
	if !s.Offer(short, t0) {
		t.Fatal("a short packet that fits was refused")
	}
	for range 100 {
		if s.Offer(tiny, t0) {
			t.Fatal("a packet whose record would pass the bound by a byte was kept")
		}
	}
	res, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, res.Counts)
	if res.Counts.Written != 11 || res.Counts.OverSize != 101 || res.Bytes != size || int64(buf.Len()) != size {
		t.Fatalf("%+v, %d bytes written; want 11 packets, %d bytes", res, buf.Len(), size)
	}
}

// TestRingFullDrops: with the disk stalled, Offer neither blocks nor
// allocates: the ring fills, then packets are dropped and counted.
func TestRingFullDrops(t *testing.T) {
	const ring = 8
	g := newGateWriter()
	s := newSampler(t, g, Config{Ring: ring})
	p := syn(t, client(1, false), server4, 1)

	done := make(chan int)
	go func() {
		kept := 0
		for range ring + 100 {
			if s.Offer(p, t0) {
				kept++
			}
		}
		done <- kept
	}()
	var kept int
	poll.Must(t, 10*time.Second, "Offer returned with the disk stalled", func() bool {
		select {
		case kept = <-done:
			return true
		default:
			return false
		}
	})
	if kept != ring {
		t.Fatalf("%d kept with the disk stalled, want the ring's %d", kept, ring)
	}
	if c := s.Counts(); c.Dropped != 100 || c.Offered != ring+100 {
		t.Fatalf("counts %+v, want 100 dropped", c)
	}
	// The writer holds what it took; once the disk moves, all of it lands.
	<-g.held
	close(g.open)
	res, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, res.Counts)
	if res.Counts.Written != ring {
		t.Fatalf("%+v, want %d written", res.Counts, ring)
	}
}

// TestWriteError: a failing file ends the sample; Close reports why and
// Offer drops from then on.
func TestWriteError(t *testing.T) {
	s := newSampler(t, &failWriter{}, Config{})
	p := syn(t, client(1, false), server4, 1)
	s.Offer(p, t0)
	poll.Must(t, 10*time.Second, "the write error noticed", func() bool { return s.Counts().Dropped > 0 })
	if s.Offer(p, t0) {
		t.Fatal("Offer kept a packet after the file failed")
	}
	res, err := s.Close()
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("Close: %v, want the write error", err)
	}
	checkCounts(t, res.Counts)
	if res.Counts.Written != 0 || res.Counts.Dropped != 2 {
		t.Fatalf("%+v", res.Counts)
	}
	if _, err2 := s.Close(); err2 != err {
		t.Fatalf("second Close: %v, first %v", err2, err)
	}
}

func TestOfferInvalid(t *testing.T) {
	s := newSampler(t, nopCloser{io.Discard}, Config{})
	for _, p := range [][]byte{nil, {}, {0x50, 0, 0, 0}, {0x00}, []byte("\x80 not IP")} {
		if s.Offer(p, t0) {
			t.Errorf("Offer(%q) kept", p)
		}
	}
	if c := s.Counts(); c != (Counts{Invalid: 5}) {
		t.Fatalf("counts %+v", c)
	}
	res, _ := s.Close()
	if s.Offer(syn(t, client(1, false), server4, 1), t0) {
		t.Fatal("Offer kept a packet after Close")
	}
	if res.Counts.Offered != 0 {
		t.Fatalf("%+v", res.Counts)
	}
}

func TestSamplerConfig(t *testing.T) {
	bad := []Config{
		{First: -1},
		{Snaplen: MinSnaplen - 1},
		{Snaplen: MaxSnaplen + 1},
		{MaxBytes: fileHeaderLen + recordHeaderLen + DefaultSnaplen - 1},
		{Ring: -1},
		{Ring: MaxRing + 1},
	}
	for _, cfg := range bad {
		if _, err := NewSampler(nopCloser{io.Discard}, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("NewSampler(%+v): %v, want ErrConfig", cfg, err)
		}
	}
	if _, err := NewSampler(&failWriter{writes: 1}, Config{}); !errors.Is(err, errDiskFull) {
		t.Errorf("NewSampler on a failing writer: %v", err)
	}
}

// TestConcurrentOffers: writers on several goroutines and the file's
// writer agree on every packet (run it with -race).
func TestConcurrentOffers(t *testing.T) {
	path := t.TempDir() + "/c.pcap"
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	s := newSampler(t, f, Config{First: 100_000, Ring: 64})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			dst := server4
			if w%2 == 1 {
				dst = server6
			}
			p := syn(t, client(w, w%2 == 1), dst, 1)
			for i := range 5000 {
				s.Offer(p, t0.Add(time.Duration(i)))
			}
		})
	}
	wg.Wait()
	res, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, res.Counts)
	if res.Counts.Offered != 20_000 || res.Counts.Written == 0 {
		t.Fatalf("%+v", res.Counts)
	}
	if got := readPcap(t, path); uint64(len(got)) != res.Counts.Written {
		t.Fatalf("%d packets in the file, %d written", len(got), res.Counts.Written)
	}
}

func TestOfferAllocatesNothing(t *testing.T) {
	s := newSampler(t, nopCloser{io.Discard}, Config{First: 10})
	p := syn(t, client(1, false), server4, 1)
	i := 0
	if n := testing.AllocsPerRun(10_000, func() {
		i++
		s.Offer(p, t0.Add(time.Duration(i)*time.Millisecond))
	}); n != 0 {
		t.Fatalf("Offer: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { s.Offer(nil, t0) }); n != 0 {
		t.Fatalf("Offer of nothing: %v allocations", n)
	}
}

// BenchmarkOffer is the packet path's cost, one writer: a packet copied
// into the ring (the timer stops while the writer empties it), a packet
// dropped because the disk stalled and the ring is full, and a packet
// skipped by the trickle, as nearly all are in a flood.
func BenchmarkOffer(b *testing.B) {
	p := syn(b, client(1, false), server4, 1)
	b.Run("copied", func(b *testing.B) {
		s, err := NewSampler(nopCloser{io.Discard}, Config{First: 1 << 30, MaxBytes: 1 << 50})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.ReportAllocs()
		for i := range b.N {
			if i%DefaultRing == 0 {
				b.StopTimer()
				for s.queued() > 0 {
					runtime.Gosched()
				}
				b.StartTimer()
			}
			s.Offer(p, t0)
		}
	})
	b.Run("ring full", func(b *testing.B) {
		g := newGateWriter()
		s, err := NewSampler(g, Config{First: 1 << 30, MaxBytes: 1 << 50})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		defer close(g.open)
		for range DefaultRing {
			s.Offer(p, t0)
		}
		b.ReportAllocs()
		for b.Loop() {
			s.Offer(p, t0)
		}
	})
	b.Run("trickle", func(b *testing.B) {
		s, err := NewSampler(nopCloser{io.Discard}, Config{First: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		ts := t0
		b.ReportAllocs()
		for b.Loop() {
			ts = ts.Add(time.Microsecond)
			s.Offer(p, ts)
		}
	})
}

// BenchmarkOfferParallel is the trickle's cost with every CPU offering.
func BenchmarkOfferParallel(b *testing.B) {
	p := syn(b, client(1, false), server4, 1)
	s, err := NewSampler(nopCloser{io.Discard}, Config{First: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ts := t0
		for pb.Next() {
			ts = ts.Add(time.Microsecond)
			s.Offer(p, ts)
		}
	})
}

// queued is the number of packets waiting for the writer.
func (s *Sampler) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}
