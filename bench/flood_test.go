package bench_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/synguard/synguard/bench"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

var (
	spoof4 = netip.MustParsePrefix("198.18.0.0/15")
	spoof6 = netip.MustParsePrefix("2001:db8:ff00::/40")
)

// sink is a sender namespace and a receiver namespace joined by one veth
// pair (eth0 on both sides). The receiver owns the targets and has no route
// back to spoofed sources, so it answers nothing: every packet on the link
// is the flood's. The sender has permanent neighbour entries, so no ARP or
// neighbour discovery delays or joins the flood.
type sink struct {
	tx, rx           *netns.NS
	target4, target6 netip.Addr
}

func newSink(t testing.TB, ipv6 bool) *sink {
	t.Helper()
	ctx := context.Background()
	s := &sink{
		target4: netip.MustParseAddr("203.0.113.2"),
		target6: netip.MustParseAddr("2001:db8:b::2"),
		tx:      nstest.New(t, "sgt-flood-tx"),
		rx:      nstest.New(t, "sgt-flood-rx"),
	}

	run := func(ns *netns.NS, args ...string) {
		t.Helper()
		if err := netns.Run(ctx, "ip", append([]string{"-n", ns.Name}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []*netns.NS{s.tx, s.rx} {
		settings := []string{"net.ipv4.ip_forward=0", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1"}
		if ipv6 {
			settings = []string{"net.ipv4.ip_forward=0", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"}
		}
		if err := ns.Run(ctx, "sysctl", append([]string{"-qw"}, settings...)...); err != nil {
			t.Fatal(err)
		}
	}
	if err := netns.Run(ctx, "ip", "link", "add", "eth0", "netns", s.tx.Name, "type", "veth", "peer", "name", "eth0", "netns", s.rx.Name); err != nil {
		t.Fatal(err)
	}
	run(s.tx, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	run(s.rx, "addr", "add", "198.51.100.1/24", "dev", "eth0")
	run(s.rx, "addr", "add", s.target4.String()+"/32", "dev", "eth0")
	if ipv6 {
		run(s.tx, "addr", "add", "2001:db8:c::2/64", "dev", "eth0", "nodad")
		run(s.rx, "addr", "add", "2001:db8:c::1/64", "dev", "eth0", "nodad")
		run(s.rx, "addr", "add", s.target6.String()+"/128", "dev", "eth0", "nodad")
	}
	run(s.tx, "link", "set", "eth0", "up")
	run(s.rx, "link", "set", "eth0", "up")
	for _, ns := range []*netns.NS{s.tx, s.rx} {
		if err := lab.WaitLinkReady(ctx, ns, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	mac := linkAddress(t, s.rx, "eth0")
	run(s.tx, "neigh", "replace", "198.51.100.1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
	run(s.tx, "route", "add", "203.0.113.0/24", "via", "198.51.100.1")
	if ipv6 {
		run(s.tx, "-6", "neigh", "replace", "2001:db8:c::1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
		run(s.tx, "-6", "route", "add", "2001:db8:b::/64", "via", "2001:db8:c::1")
	}
	return s
}

func linkAddress(t testing.TB, ns *netns.NS, iface string) string {
	t.Helper()
	out, err := ns.Output(context.Background(), "ip", "-j", "link", "show", "dev", iface)
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip link output %q: %v", out, err)
	}
	return links[0].Address
}

func (s *sink) counters(t testing.TB) (tx, rx lab.LinkCounters) {
	t.Helper()
	ctx := context.Background()
	tx, err := lab.ReadLinkCounters(ctx, s.tx, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	rx, err = lab.ReadLinkCounters(ctx, s.rx, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return tx, rx
}

// flood runs cfg from the sender namespace: the socket is opened inside it,
// the flood itself runs on an ordinary goroutine.
func (s *sink) flood(t testing.TB, ctx context.Context, cfg bench.FloodConfig) (bench.FloodStats, error) {
	t.Helper()
	var f *bench.Flooder
	if err := s.tx.Do(func() (err error) {
		f, err = bench.NewFlooder(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Run(ctx)
}

// What the flood puts on the wire, SYNs or forged ACKs, captured in the
// receiving namespace and decoded by packet.Parse and by gopacket.
func TestFloodPacketContents(t *testing.T) {
	roottest.Require(t)
	s := newSink(t, true)
	for _, tt := range []struct {
		name    string
		kind    bench.Kind
		target  netip.AddrPort
		sources netip.Prefix
	}{
		{"IPv4", bench.KindSYN, netip.AddrPortFrom(s.target4, 8080), spoof4},
		{"IPv4 narrow", bench.KindSYN, netip.AddrPortFrom(s.target4, 443), netip.MustParsePrefix("198.19.255.4/30")},
		{"IPv6", bench.KindSYN, netip.AddrPortFrom(s.target6, 8080), spoof6},
		{"ACK IPv4", bench.KindACK, netip.AddrPortFrom(s.target4, 8080), spoof4},
		{"ACK IPv6", bench.KindACK, netip.AddrPortFrom(s.target6, 443), spoof6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			capture, err := lab.OpenCapture(s.rx, "eth0")
			if err != nil {
				t.Fatal(err)
			}
			defer capture.Close()
			const count = 300
			st, err := s.flood(t, context.Background(), bench.FloodConfig{
				Kind: tt.kind, Target: tt.target, Sources: tt.sources, Count: count, Duration: 10 * time.Second,
			})
			if err != nil || st.Sent != count || st.Errors != 0 {
				t.Fatalf("flood: %+v, %v", st, err)
			}

			var (
				buf     = make([]byte, 2048)
				p       packet.Packet
				got     int
				sources = map[netip.Addr]bool{}
				ports   = map[uint16]bool{}
				seqs    = map[uint32]bool{}
			)
			for got < count {
				n, out, err := capture.Read(buf, 2*time.Second)
				if err != nil {
					t.Fatalf("after %d of %d SYNs: %v", got, count, err)
				}
				if out || packet.Parse(buf[:n], &p) != nil || p.Destination() != tt.target {
					continue // neighbour discovery, MLD and the like
				}
				got++
				checkFloodPacket(t, tt.kind, buf[:n], &p, tt.target, tt.sources)
				if got <= 20 {
					crossCheck(t, tt.kind, buf[:n], &p)
				}
				sources[p.Src], ports[p.SrcPort], seqs[p.Seq] = true, true, true
			}
			// Nothing beyond Count arrives.
			for {
				n, out, err := capture.Read(buf, 200*time.Millisecond)
				if errors.Is(err, lab.ErrCaptureTimeout) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if !out && packet.Parse(buf[:n], &p) == nil && p.Destination() == tt.target {
					t.Fatalf("more than %d SYNs arrived", count)
				}
			}
			wantSources := min(count*9/10, 1<<(tt.sources.Addr().BitLen()-tt.sources.Bits()))
			if len(sources) < wantSources || len(ports) < count*9/10 || len(seqs) < count*99/100 {
				t.Fatalf("%d distinct sources (want %d), %d ports, %d ISNs in %d SYNs", len(sources), wantSources, len(ports), len(seqs), count)
			}
		})
	}
}

func checkFloodPacket(t *testing.T, kind bench.Kind, b []byte, p *packet.Packet, target netip.AddrPort, sources netip.Prefix) {
	t.Helper()
	o := p.Options
	if kind == bench.KindACK {
		switch {
		case p.Flags != packet.ACK:
			t.Fatalf("flags %v, want ACK only", p.Flags)
		case !sources.Contains(p.Src) || p.SrcPort < 1024:
			t.Fatalf("source %v outside %v or port %d", p.Src, sources, p.SrcPort)
		case !packet.VerifyTCPChecksum(b, p):
			t.Fatal("bad TCP checksum")
		case p.Src.Is4() && packet.Checksum(b[:p.IPHeaderLen]) != 0:
			t.Fatal("bad IPv4 header checksum")
		case p.PayloadLen != 0 || p.HopLimit != packet.DefaultHopLimit:
			t.Fatalf("payload %d, hop limit %d", p.PayloadLen, p.HopLimit)
		case !o.HasTimestamps || o.HasMSS || o.SACKPermitted || o.HasWindowScale:
			t.Fatalf("options %+v", o)
		}
		return
	}
	switch {
	case p.Flags != packet.SYN:
		t.Fatalf("flags %v, want SYN only", p.Flags)
	case !sources.Contains(p.Src):
		t.Fatalf("source %v outside %v", p.Src, sources)
	case p.SrcPort < 1024:
		t.Fatalf("source port %d", p.SrcPort)
	case !packet.VerifyTCPChecksum(b, p):
		t.Fatal("bad TCP checksum")
	case p.Src.Is4() && packet.Checksum(b[:p.IPHeaderLen]) != 0:
		t.Fatal("bad IPv4 header checksum")
	case p.PayloadLen != 0 || p.Ack != 0 || p.HopLimit != packet.DefaultHopLimit:
		t.Fatalf("payload %d, ack %d, hop limit %d", p.PayloadLen, p.Ack, p.HopLimit)
	case !o.HasMSS || (o.MSS != 1460 && o.MSS != 1440) || !o.SACKPermitted || !o.HasTimestamps || o.TSEcr != 0 ||
		!o.HasWindowScale || o.WindowScale != 7:
		t.Fatalf("options %+v", o)
	}
}

// crossCheck decodes b with gopacket, an independent implementation.
func crossCheck(t *testing.T, kind bench.Kind, b []byte, p *packet.Packet) {
	t.Helper()
	first := layers.LayerTypeIPv4
	if p.IsIPv6() {
		first = layers.LayerTypeIPv6
	}
	pkt := gopacket.NewPacket(b, first, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v", el.Error())
	}
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		t.Fatal("gopacket found no TCP layer")
	}
	ack := kind == bench.KindACK
	if tcp.SYN == ack || tcp.ACK != ack || tcp.RST || tcp.FIN || tcp.PSH || tcp.URG {
		t.Fatalf("gopacket flags SYN=%v ACK=%v RST=%v FIN=%v PSH=%v URG=%v", tcp.SYN, tcp.ACK, tcp.RST, tcp.FIN, tcp.PSH, tcp.URG)
	}
	if uint16(tcp.SrcPort) != p.SrcPort || uint16(tcp.DstPort) != p.DstPort || tcp.Seq != p.Seq || tcp.Ack != p.Ack {
		t.Fatalf("gopacket sees %d>%d seq %d ack %d", tcp.SrcPort, tcp.DstPort, tcp.Seq, tcp.Ack)
	}
	kinds := map[layers.TCPOptionKind]bool{}
	for _, o := range tcp.Options {
		kinds[o.OptionType] = true
	}
	wantOpts := []layers.TCPOptionKind{layers.TCPOptionKindMSS, layers.TCPOptionKindSACKPermitted,
		layers.TCPOptionKindTimestamps, layers.TCPOptionKindWindowScale}
	if ack {
		wantOpts = []layers.TCPOptionKind{layers.TCPOptionKindNop, layers.TCPOptionKindTimestamps}
	}
	for _, k := range wantOpts {
		if !kinds[k] {
			t.Fatalf("gopacket finds no %v option in %v", k, tcp.Options)
		}
	}
	if ack && len(kinds) != 2 {
		t.Fatalf("gopacket finds options %v in a forged ACK, want NOP and timestamps", tcp.Options)
	}
	// The checksums are checkFloodPacket's (package packet's own, which
	// its tests hold against gopacket); here the addresses.
	src, dst := pkt.NetworkLayer().NetworkFlow().Endpoints()
	if src.String() != p.Src.String() || dst.String() != p.Dst.String() {
		t.Fatalf("gopacket addresses %v > %v", src, dst)
	}
}

// Count stops the flood exactly, SYNs or forged ACKs: the stats, the
// sender's interface and the receiver's interface all agree. The send loop
// does not allocate per packet.
func TestFloodCountIsExact(t *testing.T) {
	roottest.Require(t)
	s := newSink(t, false)
	for _, kind := range []bench.Kind{bench.KindSYN, bench.KindACK} {
		t.Run(string(kind), func(t *testing.T) {
			const count = 100_000
			tx0, rx0 := s.counters(t)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			st, err := s.flood(t, context.Background(), bench.FloodConfig{
				Kind: kind, Target: netip.AddrPortFrom(s.target4, 80), Sources: spoof4, Count: count, Duration: time.Minute,
			})
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			tx1, rx1 := s.counters(t)
			tx, rx := tx1.Sub(tx0), rx1.Sub(rx0)
			t.Logf("%+v (%.0f pps); sender %+v; receiver %+v", st, st.PPS(), tx, rx)
			if st.Sent != count || st.Errors != 0 {
				t.Fatalf("stats %+v, want %d sent", st, count)
			}
			if tx.TxPackets+tx.TxDropped != count {
				t.Fatalf("sender's interface passed on %d packets (%d dropped), want %d", tx.TxPackets+tx.TxDropped, tx.TxDropped, count)
			}
			if rx.RxPackets+rx.RxDropped != tx.TxPackets+tx.TxDropped {
				t.Errorf("receiver counted %d packets, sender %d", rx.RxPackets+rx.RxDropped, tx.TxPackets+tx.TxDropped)
			}
			if mallocs := after.Mallocs - before.Mallocs; mallocs > 1000 {
				t.Errorf("%d allocations for %d packets", mallocs, count)
			}
		})
	}
}

// Duration stops a flood that Count would not, and a cancelled context
// stops it promptly with the context's error.
func TestFloodDurationAndContextStop(t *testing.T) {
	roottest.Require(t)
	s := newSink(t, false)
	target := netip.AddrPortFrom(s.target4, 80)

	const d = 300 * time.Millisecond
	tx0, _ := s.counters(t)
	st, err := s.flood(t, context.Background(), bench.FloodConfig{
		Target: target, Sources: spoof4, Count: bench.MaxFloodCount, Duration: d,
	})
	if err != nil {
		t.Fatal(err)
	}
	tx1, _ := s.counters(t)
	t.Logf("duration-bound flood: %+v (%.0f pps)", st, st.PPS())
	if st.Elapsed < d || st.Elapsed > d+time.Second || st.Sent == 0 || st.Sent >= bench.MaxFloodCount {
		t.Fatalf("flood for %v: %+v", d, st)
	}
	if sent := tx1.Sub(tx0); sent.TxPackets+sent.TxDropped != uint64(st.Sent) {
		t.Fatalf("interface passed on %d packets, stats say %d", sent.TxPackets+sent.TxDropped, st.Sent)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	st, err = s.flood(t, ctx, bench.FloodConfig{
		Target: target, Sources: spoof4, Rate: 1000, Count: bench.MaxFloodCount, Duration: time.Minute,
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled flood returned %v", err)
	}
	if took := time.Since(start); took > time.Second || st.Sent == 0 || st.Sent > 1000 {
		t.Fatalf("cancelled after 200ms: returned after %v with %+v", took, st)
	}
}

// A configured rate is kept: packets sent over the duration, as a ratio of
// the configured rate (not a statement on the machine's speed).
func TestFloodRate(t *testing.T) {
	roottest.Require(t)
	s := newSink(t, false)
	for _, tt := range []struct {
		rate int
		d    time.Duration
	}{
		{20000, time.Second},
		{1500, time.Second},
	} {
		t.Run(fmt.Sprint(tt.rate), func(t *testing.T) {
			_, rx0 := s.counters(t)
			st, err := s.flood(t, context.Background(), bench.FloodConfig{
				Target: netip.AddrPortFrom(s.target4, 80), Sources: spoof4,
				Rate: tt.rate, Count: bench.MaxFloodCount, Duration: tt.d,
			})
			if err != nil {
				t.Fatal(err)
			}
			_, rx1 := s.counters(t)
			received := rx1.Sub(rx0).RxPackets
			want := float64(tt.rate) * tt.d.Seconds()
			t.Logf("rate %d for %v: %+v, %d received, %.0f pps achieved", tt.rate, tt.d, st, received, st.PPS())
			for what, got := range map[string]float64{
				"sent":               float64(st.Sent),
				"received":           float64(received),
				"sent per elapsed s": st.PPS() * tt.d.Seconds(),
			} {
				if ratio := got / want; math.Abs(ratio-1) > 0.15 {
					t.Errorf("%s %.0f is %.2f of %.0f", what, got, ratio, want)
				}
			}
		})
	}
}

// At Rate 0 a flood sends as fast as it can until its Duration ends it:
// into a namespace that drops it, where the sender's and the receiver's
// interfaces count every packet the stats report, and through a lab
// gateway to a backend (listening for IPv4, a closed port for IPv6), whose
// interface must see the flood's SYNs, no more than were sent. Each flood
// stops by itself within a second of its Duration, short of MaxFloodCount.
// The pps reached is logged, not asserted: it measures the machine.
func TestFloodUnlimitedRate(t *testing.T) {
	roottest.Require(t)
	if testing.Short() {
		t.Skip("floods for 2 s per case")
	}
	const d = 2 * time.Second
	// stoppedByDuration checks what the generator reports of itself.
	stoppedByDuration := func(what string, st bench.FloodStats) {
		t.Helper()
		t.Logf("Rate=0 %s: %d SYNs in %v = %.0f pps (%d errors)", what, st.Sent, st.Elapsed, st.PPS(), st.Errors)
		if st.Sent == 0 {
			t.Fatalf("%s: sent nothing: %+v", what, st)
		}
		if st.Elapsed < d || st.Elapsed > d+time.Second || st.Sent >= bench.MaxFloodCount {
			t.Fatalf("%s: a flood bounded by Duration %v stopped after %v having sent %d (Count %d)", what, d, st.Elapsed, st.Sent, bench.MaxFloodCount)
		}
	}

	s := newSink(t, false)
	tx0, rx0 := s.counters(t)
	st, err := s.flood(t, context.Background(), bench.FloodConfig{
		Target: netip.AddrPortFrom(s.target4, 80), Sources: spoof4, Count: bench.MaxFloodCount, Duration: d,
	})
	if err != nil {
		t.Fatal(err)
	}
	stoppedByDuration("into a sink namespace", st)
	tx1, rx1 := s.counters(t)
	tx, rx := tx1.Sub(tx0), rx1.Sub(rx0)
	if tx.TxPackets+tx.TxDropped != uint64(st.Sent) {
		t.Fatalf("sender's interface passed on %d packets (%d dropped), stats say %d sent", tx.TxPackets+tx.TxDropped, tx.TxDropped, st.Sent)
	}
	if rx.RxPackets+rx.RxDropped != tx.TxPackets+tx.TxDropped {
		t.Fatalf("receiver counted %d packets, sender %d", rx.RxPackets+rx.RxDropped, tx.TxPackets+tx.TxDropped)
	}

	ctx := context.Background()
	topo, err := lab.Up(ctx, lab.Config{Name: fmt.Sprintf("sgt-floodlab-%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Down(ctx)
	be, err := lab.ServeBackend(ctx, topo.Backend, netip.AddrPortFrom(topo.BackendAddr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	for _, tc := range []struct {
		name    string
		target  netip.AddrPort
		sources netip.Prefix
	}{
		{"IPv4", be.Addr(), spoof4},
		{"IPv6", netip.AddrPortFrom(topo.BackendAddr6, 8081), spoof6},
	} {
		syns, err := lab.WatchSYNs(topo.Backend, topo.BackendSide)
		if err != nil {
			t.Fatal(err)
		}
		var f *bench.Flooder
		if err := topo.Client.Do(func() (err error) {
			f, err = bench.NewFlooder(bench.FloodConfig{Target: tc.target, Sources: tc.sources, Count: bench.MaxFloodCount, Duration: d})
			return err
		}); err != nil {
			syns.Close()
			t.Fatal(err)
		}
		st, err := f.Run(ctx)
		f.Close()
		if err != nil {
			syns.Close()
			t.Fatal(err)
		}
		stoppedByDuration(fmt.Sprintf("%s through the lab gateway to %v", tc.name, tc.target), st)
		// The backend's side of the link: the flood's SYNs arrive (the
		// capture may miss some at this rate, never invent any).
		arrived := poll.Until(5*time.Second, func() bool { return syns.Spoofed() > 0 })
		syns.Close()
		t.Logf("%s: the backend's capture counted %d of the %d SYNs", tc.name, syns.Spoofed(), st.Sent)
		if !arrived {
			t.Fatalf("%s: none of the %d SYNs sent reached the backend", tc.name, st.Sent)
		}
		if n := syns.Spoofed(); n > int64(st.Sent) {
			t.Fatalf("%s: the backend counted %d SYNs from the flood's sources, %d were sent", tc.name, n, st.Sent)
		}
	}
	// The backend still serves its clients once the flood is over.
	if r := lab.Probe(ctx, topo.Client, be.Addr(), 5*time.Second); !r.OK {
		t.Errorf("probe after the flood: %v", r.Err)
	}
}

func TestFloodConfigErrors(t *testing.T) {
	ok := bench.FloodConfig{
		Target:   netip.MustParseAddrPort("203.0.113.2:80"),
		Sources:  spoof4,
		Count:    10,
		Duration: time.Second,
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	ok6 := ok
	ok6.Target, ok6.Sources = netip.MustParseAddrPort("[2001:db8:b::2]:80"), netip.MustParsePrefix("2001:db8:ff42::/48")
	if err := ok6.Validate(); err != nil {
		t.Fatalf("valid IPv6 config: %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(*bench.FloodConfig)
	}{
		{"sources outside", func(c *bench.FloodConfig) { c.Sources = netip.MustParsePrefix("10.0.0.0/8") }},
		{"sources wider than the range", func(c *bench.FloodConfig) { c.Sources = netip.MustParsePrefix("198.16.0.0/14") }},
		{"sources next to the range", func(c *bench.FloodConfig) { c.Sources = netip.MustParsePrefix("198.20.0.0/16") }},
		{"client range as sources", func(c *bench.FloodConfig) { c.Sources = netip.MustParsePrefix("198.51.100.0/24") }},
		{"no sources", func(c *bench.FloodConfig) { c.Sources = netip.Prefix{} }},
		{"IPv6 sources, IPv4 target", func(c *bench.FloodConfig) { c.Sources = spoof6 }},
		{"IPv6 documentation prefix", func(c *bench.FloodConfig) {
			c.Target, c.Sources = netip.MustParseAddrPort("[2001:db8:b::2]:80"), netip.MustParsePrefix("2001:db8::/32")
		}},
		{"IPv6 outside", func(c *bench.FloodConfig) {
			c.Target, c.Sources = netip.MustParseAddrPort("[2001:db8:b::2]:80"), netip.MustParsePrefix("2001:db9:ff00::/40")
		}},
		{"mapped IPv4 sources", func(c *bench.FloodConfig) { c.Sources = netip.MustParsePrefix("::ffff:198.18.0.0/111") }},
		{"count 0", func(c *bench.FloodConfig) { c.Count = 0 }},
		{"count negative", func(c *bench.FloodConfig) { c.Count = -1 }},
		{"count over cap", func(c *bench.FloodConfig) { c.Count = bench.MaxFloodCount + 1 }},
		{"duration 0", func(c *bench.FloodConfig) { c.Duration = 0 }},
		{"duration over cap", func(c *bench.FloodConfig) { c.Duration = bench.MaxFloodDuration + time.Second }},
		{"negative rate", func(c *bench.FloodConfig) { c.Rate = -1 }},
		{"batch over cap", func(c *bench.FloodConfig) { c.Batch = bench.MaxBatch + 1 }},
		{"no target", func(c *bench.FloodConfig) { c.Target = netip.AddrPort{} }},
		{"public target", func(c *bench.FloodConfig) { c.Target = netip.MustParseAddrPort("8.8.8.8:53") }},
		{"public IPv6 target", func(c *bench.FloodConfig) {
			c.Target, c.Sources = netip.MustParseAddrPort("[2606:4700::1]:80"), spoof6
		}},
		{"target port 0", func(c *bench.FloodConfig) { c.Target = netip.MustParseAddrPort("203.0.113.2:0") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			if err := cfg.Validate(); err == nil {
				t.Fatalf("Validate accepted %+v", cfg)
			}
			// NewFlooder and Flood refuse it before opening any socket.
			if f, err := bench.NewFlooder(cfg); err == nil {
				f.Close()
				t.Fatal("NewFlooder accepted it")
			}
			if _, err := bench.Flood(context.Background(), cfg); err == nil {
				t.Fatal("Flood accepted it")
			}
		})
	}
}

func TestLabTarget(t *testing.T) {
	for a, want := range map[string]bool{
		"203.0.113.2": true, "198.51.100.9": true, "192.0.2.1": true, "198.19.0.1": true,
		"10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "127.0.0.1": true,
		"2001:db8:b::2": true, "fd00::1": true, "::1": true,
		"1.1.1.1": false, "8.8.8.8": false, "198.20.0.1": false, "100.64.0.1": false,
		"2001:4860::1": false, "2001:db9::1": false, "0.0.0.0": false,
	} {
		if got := bench.LabTarget(netip.MustParseAddr(a)); got != want {
			t.Errorf("LabTarget(%s) = %v, want %v", a, got, want)
		}
	}
}
