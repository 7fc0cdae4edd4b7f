package xdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
)

var (
	service4 = netip.MustParseAddrPort("203.0.113.10:443")
	service6 = netip.MustParseAddrPort("[2001:db8:5::10]:443")
	backend  = engine.BackendOptions{MSS: 1448, WindowScale: 9, SACKPermitted: true}
	macA     = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB     = []byte{0x02, 0, 0, 0, 0, 0xb}
)

// clock is a settable time shared by the jar and the program.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// harness is the program and an engine that share a jar and a clock.
type harness struct {
	t     testing.TB
	p     *Program
	clock *clock
	jar   *cookies.Jar
	eng   *engine.Engine
	w     *engine.Worker
	out   *capture
}

// capture keeps what the engine sends.
type capture struct{ pkts [][]byte }

func (c *capture) Add(b []byte, _ netip.Addr) bool {
	c.pkts = append(c.pkts, bytes.Clone(b))
	return true
}
func (c *capture) Flush(func(int, error)) {}

// noKernel takes every hand-off; these tests stop before one.
type noKernel struct{}

func (noKernel) Create(handoff.Flow) error        { return nil }
func (noKernel) Delete(_, _ netip.AddrPort) error { return nil }

func newHarness(t testing.TB) *harness {
	t.Helper()
	roottest.Require(t)
	p, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	h := &harness{t: t, p: p, clock: &clock{t: time.Unix(1_800_000_030, 0)}, out: &capture{}}
	h.jar, err = cookies.New(cookies.Config{Now: h.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	h.eng, err = engine.New(engine.Config{
		Services:        []engine.ServiceConfig{{Addr: service4}, {Addr: service6}},
		Mode:            engine.ModeAlways,
		Cookies:         h.jar,
		NewBatch:        func() engine.Batch { return &capture{} },
		Kernel:          noKernel{},
		BackendOverride: &backend,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.w = h.eng.NewWorker(h.out)
	for i, s := range []netip.AddrPort{service4, service6} {
		if err := p.SetService(i, Service{Addr: s, Mode: Cookie, MSS: backend.MSS, WindowScale: backend.WindowScale, SACKPermitted: backend.SACKPermitted}); err != nil {
			t.Fatal(err)
		}
	}
	h.renew()
	return h
}

// renew hands the program the jar's keys and tells it the time is the
// harness clock's, for a minute.
func (h *harness) renew() {
	h.t.Helper()
	if err := h.p.renewAt(h.jar.EpochKeys(h.clock.t), h.clock.t, h.clock.t.Add(time.Minute)); err != nil {
		h.t.Fatal(err)
	}
}

// run runs the program on frame and returns its verdict and the frame it
// left.
func (h *harness) run(frame []byte) (uint32, []byte) {
	h.t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := h.p.objs.SynguardXdp.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		h.t.Fatal(err)
	}
	return ret, out
}

// engineReply is what the engine sends for ip, the IP packet alone.
func (h *harness) engineReply(ip []byte) (nf.Verdict, []byte) {
	h.out.pkts = nil
	v := h.w.Handle(ip, nf.Prerouting)
	h.w.Flush()
	if len(h.out.pkts) == 0 {
		return v, nil
	}
	return v, h.out.pkts[0]
}

// ether wraps an IP packet in an Ethernet frame from macA to macB.
func ether(ip []byte) []byte {
	f := make([]byte, 14, 14+len(ip))
	copy(f[0:6], macB)
	copy(f[6:12], macA)
	if ip[0]>>4 == 6 {
		binary.BigEndian.PutUint16(f[12:], 0x86dd)
	} else {
		binary.BigEndian.PutUint16(f[12:], 0x0800)
	}
	return append(f, ip...)
}

// rawSYN builds a TCP segment from src to dst with flags and the option
// bytes opts (padded with EOL to a multiple of 4), and payload.
func rawSegment(src, dst netip.AddrPort, seq, ack uint32, flags packet.Flags, opts, payload []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	tcp := make([]byte, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte((20+len(opts))/4) << 4
	tcp[13] = byte(flags)
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], payload)
	var ip []byte
	if src.Addr().Is4() {
		ip = make([]byte, 20, 20+len(tcp))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		binary.BigEndian.PutUint16(ip[6:], 0x4000)
		ip[8], ip[9] = 61, 6
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip))
	} else {
		ip = make([]byte, 40, 40+len(tcp))
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
		ip[6], ip[7] = 6, 61
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	binary.BigEndian.PutUint16(tcp[16:], packet.TCPChecksum(src.Addr(), dst.Addr(), tcp))
	return append(ip, tcp...)
}

// compareSYN runs one SYN through both paths and fails unless they agree
// byte for byte: the same SYN-ACK out the same link, or the same refusal.
func (h *harness) compareSYN(what string, ip []byte) {
	h.t.Helper()
	var parsed packet.Packet
	parseErr := packet.Parse(ip, &parsed)
	v, want := h.engineReply(ip)
	ret, out := h.run(ether(ip))
	switch {
	case parseErr != nil:
		// The engine drops what it cannot parse and counts it; the
		// program must leave that to it.
		if ret != xdpPass {
			h.t.Fatalf("%s: a SYN packet.Parse rejects (%v) got XDP verdict %d, want pass", what, parseErr, ret)
		}
	case want == nil:
		if v != nf.Drop || ret != xdpDrop {
			h.t.Fatalf("%s: engine sent nothing (verdict %v), program verdict %d; want both to refuse", what, v, ret)
		}
	default:
		if ret != xdpTX {
			h.t.Fatalf("%s: program verdict %d, want XDP_TX", what, ret)
		}
		if !bytes.Equal(out[0:6], macA) || !bytes.Equal(out[6:12], macB) {
			h.t.Fatalf("%s: Ethernet addresses not swapped: % x", what, out[:12])
		}
		got := out[14 : 14+len(want)]
		if !bytes.Equal(got, want) {
			h.t.Fatalf("%s: SYN-ACKs differ\nengine:  % x\nprogram: % x", what, want, got)
		}
	}
}

// linuxOpts are the option bytes of a Linux SYN: MSS, SACK-permitted,
// timestamps, NOP, window scale.
func linuxOpts(mss uint16, ws byte) []byte {
	return []byte{2, 4, byte(mss >> 8), byte(mss), 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, ws}
}

// optionSets cover every combination of the options a cookie carries,
// with values around each table's edges, in Linux's order and others.
func optionSets() map[string][]byte {
	sets := map[string][]byte{
		"none":                 nil,
		"no timestamps":        {2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2},
		"no timestamps ws 15":  {2, 4, 0x05, 0xb4, 1, 3, 3, 15, 1, 1, 4, 2},
		"linux, bad ts length": {2, 4, 0x05, 0xb4, 4, 2, 8, 9, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7},
		"linux":                linuxOpts(1460, 7),
		"linux jumbo":          linuxOpts(9000, 14),
		"wscale above 14":      linuxOpts(1460, 15),
		"wscale 0":             linuxOpts(1460, 0),
		"mss 0":                {2, 4, 0, 0},
		"mss tiny":             {2, 4, 0, 1},
		"mss only":             {2, 4, 0x05, 0xb4},
		"sack only":            {4, 2},
		"wscale only":          {3, 3, 5},
		"mss+sack":             {2, 4, 0x05, 0x8c, 4, 2},
		"mss+wscale":           {2, 4, 0x05, 0x8c, 3, 3, 2},
		"sack+wscale":          {4, 2, 3, 3, 8},
		"reversed":             {3, 3, 7, 4, 2, 2, 4, 0x05, 0xb4},
		"nops":                 {1, 1, 1, 2, 4, 0x05, 0xb4, 1, 1, 4, 2},
		"eol first":            {0, 2, 4, 0x05, 0xb4},
		"unknown kind":         {30, 4, 1, 2, 2, 4, 0x05, 0xb4},
		"sack blocks":          {5, 10, 0, 0, 0, 1, 0, 0, 0, 2},
		"twice mss":            {2, 4, 0x05, 0xb4, 2, 4, 0x02, 0x18},
		"bad mss length":       {2, 5, 0x05, 0xb4, 0},
		"bad wscale length":    {3, 4, 7, 0},
		"length 1":             {30, 1},
		"length past the end":  {30, 8, 0, 0},
		"kind without length":  {1, 1, 1, 30},
		"bad sack-perm length": {4, 3, 0},
		"bad timestamps":       {8, 9, 0, 0, 0, 0, 0, 0, 0},
		"bad sack":             {5, 9, 0, 0, 0, 0, 0, 0, 0},
		"full 40 nops":         bytes.Repeat([]byte{1}, 40),
		"full 40 with mss":     append(bytes.Repeat([]byte{1}, 36), 2, 4, 0x05, 0xb4),
	}
	return sets
}

// TestSYNACKMatchesEngine: for both families, every option set, and keys
// of both parities, the program's SYN-ACK is the engine's, byte for byte.
func TestSYNACKMatchesEngine(t *testing.T) {
	h := newHarness(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, epochStart := range []int64{1_800_000_000, 1_800_000_060} { // parities 0 and 1
		h.clock.t = time.Unix(epochStart+30, 0)
		h.renew()
		for name, opts := range optionSets() {
			for _, fam := range []struct {
				src netip.AddrPort
				dst netip.AddrPort
			}{
				{netip.MustParseAddrPort("198.51.100.7:40000"), service4},
				{netip.MustParseAddrPort("[2001:db8:c::7]:40000"), service6},
			} {
				for range 4 {
					src := netip.AddrPortFrom(fam.src.Addr(), uint16(1024+rng.IntN(60000)))
					ip := rawSegment(src, fam.dst, rng.Uint32(), 0, packet.SYN, opts, nil)
					h.compareSYN(name+" "+src.String(), ip)
				}
			}
		}
	}
}

// renewAt is Renew with the program's idea of now set to now.
func (p *Program) renewAt(keys cookies.EpochKeys, now, deadline time.Time) error {
	return p.renew(keys, now, deadline)
}

// FuzzSYNACKMatchesEngine feeds SYNs with arbitrary option bytes and
// payloads to both paths: whatever the engine makes of them, the program
// makes the same, or leaves them to the engine.
func FuzzSYNACKMatchesEngine(f *testing.F) {
	for _, opts := range optionSets() {
		f.Add(opts, uint32(7), false, []byte(nil))
		f.Add(opts, uint32(0xffffffff), true, []byte("early data"))
	}
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, opts []byte, seq uint32, v6 bool, payload []byte) {
		if len(opts) > 40 || len(payload) > 1200 {
			return
		}
		h.t = t
		src, dst := netip.MustParseAddrPort("198.51.100.7:40000"), service4
		if v6 {
			src, dst = netip.MustParseAddrPort("[2001:db8:c::7]:40000"), service6
		}
		h.compareSYN("fuzzed SYN", rawSegment(src, dst, seq, 0, packet.SYN, opts, payload))
	})
}

// cookieACK is the handshake ACK of a client whose SYN (seq isn) the
// engine answered, as the program would see it.
func (h *harness) cookieACK(src, dst netip.AddrPort, isn uint32) (ack []byte, cookie uint32) {
	h.t.Helper()
	_, synack := h.engineReply(rawSegment(src, dst, isn, 0, packet.SYN, linuxOpts(1460, 7), nil))
	var p packet.Packet
	if err := packet.Parse(synack, &p); err != nil {
		h.t.Fatal(err)
	}
	return rawSegment(src, dst, isn+1, p.Seq+1, packet.ACK, nil, nil), p.Seq
}

func TestACKs(t *testing.T) {
	h := newHarness(t)
	for _, fam := range []struct{ client, server netip.AddrPort }{
		{netip.MustParseAddrPort("198.51.100.7:40000"), service4},
		{netip.MustParseAddrPort("[2001:db8:c::7]:40000"), service6},
	} {
		c, s := fam.client, fam.server
		const isn = 0x1000
		valid, cookie := h.cookieACK(c, s, isn)
		for _, tt := range []struct {
			name string
			ip   []byte
			want uint32
		}{
			{"handshake ACK", valid, xdpPass},
			{"zero-window probe", rawSegment(c, s, isn, cookie+1, packet.ACK, nil, nil), xdpPass},
			{"ACK with data", rawSegment(c, s, isn+1, cookie+1, packet.ACK|packet.PSH, nil, []byte("GET /")), xdpPass},
			{"forged", rawSegment(c, s, isn+1, cookie+2, packet.ACK, nil, nil), xdpDrop},
			{"forged with data", rawSegment(c, s, isn+1, cookie^0x100, packet.ACK, nil, []byte("x")), xdpDrop},
			{"probe seq with data", rawSegment(c, s, isn, cookie+1, packet.ACK, nil, []byte("x")), xdpDrop},
			{"another client's cookie", rawSegment(netip.AddrPortFrom(c.Addr(), c.Port()+1), s, isn+1, cookie+1, packet.ACK, nil, nil), xdpDrop},
		} {
			if got, _ := h.run(ether(tt.ip)); got != tt.want {
				t.Errorf("%s %s: verdict %d, want %d", s, tt.name, got, tt.want)
			}
		}
		// The cookie stays valid through the next epoch, and not after.
		start := h.clock.t
		h.clock.t = start.Add(cookies.DefaultPeriod)
		h.renew()
		if got, _ := h.run(ether(valid)); got != xdpPass {
			t.Errorf("%s: a cookie of the last epoch: verdict %d, want pass", s, got)
		}
		h.clock.t = start.Add(2 * cookies.DefaultPeriod)
		h.renew()
		if got, _ := h.run(ether(valid)); got != xdpDrop {
			t.Errorf("%s: a cookie two epochs old: verdict %d, want drop", s, got)
		}
		h.clock.t = start
		h.renew()
	}
	c, _ := h.p.Counters(0)
	if c.ACKValid != 4 || c.ACKInvalid != 5 {
		t.Errorf("IPv4 counters %+v: want 4 valid (3, then 1 of the last epoch) and 5 invalid ACKs", c)
	}
}

// withIPv4Options inserts a 4-byte NOP option list into an IPv4 header.
func withIPv4Options(ip []byte) []byte {
	out := append(append(bytes.Clone(ip[:20]), 1, 1, 1, 0), ip[20:]...)
	out[0] = 0x46
	binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
	out[10], out[11] = 0, 0
	binary.BigEndian.PutUint16(out[10:], packet.Checksum(out[:24]))
	return out
}

// fixIPv4Sum recomputes the header checksum of an IPv4 packet.
func fixIPv4Sum(ip []byte) {
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip[:20]))
}

// withHopByHop inserts an empty hop-by-hop header after the IPv6 header.
func withHopByHop(ip []byte) []byte {
	out := append(append(bytes.Clone(ip[:40]), 6, 0, 1, 4, 0, 0, 0, 0), ip[40:]...)
	out[6] = 0
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

// vlan inserts an 802.1Q tag into an Ethernet frame.
func vlan(frame []byte) []byte {
	return append(append(bytes.Clone(frame[:12]), 0x81, 0x00, 0x00, 0x07), frame[12:]...)
}

// TestPassesWhatItDoesNotHandle: the program leaves to the kernel (and
// the NFQUEUE path) every packet it does not answer or drop for sure.
func TestPassesWhatItDoesNotHandle(t *testing.T) {
	h := newHarness(t)
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	client6 := netip.MustParseAddrPort("[2001:db8:c::7]:40000")
	syn := rawSegment(client, service4, 7, 0, packet.SYN, linuxOpts(1460, 7), nil)
	syn6 := rawSegment(client6, service6, 7, 0, packet.SYN, linuxOpts(1440, 7), nil)
	forged := rawSegment(client, service4, 8, 99, packet.ACK, nil, nil)
	frag := bytes.Clone(syn)
	binary.BigEndian.PutUint16(frag[6:], 0x2000) // more fragments
	fixIPv4Sum(frag)
	udp := bytes.Clone(syn)
	udp[9] = 17
	fixIPv4Sum(udp)
	other := rawSegment(client, netip.AddrPortFrom(service4.Addr(), 80), 7, 0, packet.SYN, linuxOpts(1460, 7), nil)
	badSum := bytes.Clone(syn)
	badSum[10] ^= 0xff
	jumbo := bytes.Clone(syn6)
	jumbo[4], jumbo[5] = 0, 0
	truncated := ether(syn)[:14+30]

	for _, tt := range []struct {
		name  string
		frame []byte
	}{
		{"VLAN-tagged SYN", vlan(ether(syn))},
		{"SYN with IPv4 options", ether(withIPv4Options(syn))},
		{"SYN behind an IPv6 extension header", ether(withHopByHop(syn6))},
		{"IPv4 fragment", ether(frag)},
		{"IPv4 header checksum wrong (the kernel drops it)", ether(badSum)},
		{"UDP", ether(udp)},
		{"SYN to an unprotected port", ether(other)},
		{"IPv6 jumbogram", ether(jumbo)},
		{"truncated", truncated},
		{"ARP", append(bytes.Clone(ether(syn)[:12]), 0x08, 0x06, 0, 1)},
		{"SYN+ACK from a client", ether(rawSegment(client, service4, 7, 9, packet.SYN|packet.ACK, nil, nil))},
		{"RST", ether(rawSegment(client, service4, 7, 0, packet.RST, nil, nil))},
		{"FIN+ACK", ether(rawSegment(client, service4, 7, 9, packet.FIN|packet.ACK, nil, nil))},
		{"SYN with a malformed option list", ether(rawSegment(client, service4, 7, 0, packet.SYN, []byte{2, 5, 5, 0xb4}, nil))},
	} {
		if got, _ := h.run(tt.frame); got != xdpPass {
			t.Errorf("%s: verdict %d, want pass", tt.name, got)
		}
	}

	// Per service mode: passthrough lets SYNs through (the engine counts
	// them half-open) but still drops forged ACKs; observe passes all.
	set := func(m ServiceMode) {
		if err := h.p.SetService(0, Service{Addr: service4, Mode: m, MSS: 1460, WindowScale: 7, SACKPermitted: true}); err != nil {
			t.Fatal(err)
		}
	}
	set(Passthrough)
	if got, _ := h.run(ether(syn)); got != xdpPass {
		t.Errorf("SYN in passthrough: verdict %d, want pass", got)
	}
	if got, _ := h.run(ether(forged)); got != xdpDrop {
		t.Errorf("forged ACK in passthrough: verdict %d, want drop", got)
	}
	set(Observe)
	for name, f := range map[string][]byte{"SYN": syn, "forged ACK": forged} {
		if got, _ := h.run(ether(f)); got != xdpPass {
			t.Errorf("%s in observe mode: verdict %d, want pass", name, got)
		}
	}
	set(Cookie)
	if got, _ := h.run(ether(syn)); got != xdpTX {
		t.Fatalf("SYN in cookie mode: verdict %d, want XDP_TX", got)
	}

	// An engine that stopped renewing: past the deadline, everything
	// passes and the NFQUEUE path decides.
	if err := h.p.renew(h.jar.EpochKeys(h.clock.t), h.clock.t, h.clock.t.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string][]byte{"SYN": syn, "forged ACK": forged} {
		if got, _ := h.run(ether(f)); got != xdpPass {
			t.Errorf("%s past the deadline: verdict %d, want pass", name, got)
		}
	}
	// Keys that do not cover now (an epoch the engine has not handed
	// over) count as stale too.
	if err := h.p.renew(h.jar.EpochKeys(h.clock.t), h.clock.t.Add(5*cookies.DefaultPeriod), h.clock.t.Add(10*cookies.DefaultPeriod)); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.run(ether(syn)); got != xdpPass {
		t.Errorf("SYN with keys of other epochs: verdict %d, want pass", got)
	}

	a, err := h.p.Actions()
	if err != nil {
		t.Fatal(err)
	}
	if a.TX != 1 || a.Drop != 1 || a.Pass < 19 {
		t.Errorf("actions %+v: want 1 TX, 1 drop, 19 or more passes", a)
	}
}

// TestEstablishedFlowsPass: an ACK of a connection the kernel tracks
// passes whatever its acknowledgement number; the same ACK without the
// entry is forged. The program looks the entry up in the namespace it
// runs in, a fresh one here.
func TestEstablishedFlowsPass(t *testing.T) {
	h := newHarness(t)
	ns := nstest.New(t, "sgxdp-ct")
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	client6 := netip.MustParseAddrPort("[2001:db8:c::7]:40000")
	if err := ns.Do(func() error {
		table, err := conntrack.Open()
		if err != nil {
			return err
		}
		defer table.Close()
		for _, fl := range []struct{ client, server netip.AddrPort }{{client, service4}, {client6, service6}} {
			ack := ether(rawSegment(fl.client, fl.server, 5000, 777, packet.ACK, nil, []byte("data")))
			if got, _ := h.run(ack); got != xdpDrop {
				return fmt.Errorf("%s: ACK of no connection: verdict %d, want drop", fl.server, got)
			}
			if err := table.Create(handoff.Flow{Client: fl.client, Server: fl.server, CookieISN: 1, ServerISN: 2,
				ClientWindowScale: 7, ServerWindowScale: 7, Mark: 0x5347}); err != nil {
				return err
			}
			if got, _ := h.run(ack); got != xdpPass {
				return fmt.Errorf("%s: ACK of a tracked connection: verdict %d, want pass", fl.server, got)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// benchRun times the program on frame with BPF_PROG_TEST_RUN, repeat runs
// at a time in the kernel, and reports the kernel's own mean time per run
// (what Benchmark returns). A
// frame the program rewrites (a SYN) must run once per call: the kernel
// repeats a run on the frame the last one left.
func benchRun(b *testing.B, h *harness, frame []byte, repeat int, want uint32) {
	var total time.Duration
	for b.Loop() {
		h.renew() // a long run outlasts the deadline of a single renewal
		ret, d, err := h.p.objs.SynguardXdp.Benchmark(frame, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		total += d
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
}

// BenchmarkProgram times the program's three ways through: a SYN answered
// with a SYN-ACK, a forged ACK dropped after the conntrack lookup and two
// MACs, and a segment of an established flow passed after the lookup.
func BenchmarkProgram(b *testing.B) {
	h := newHarness(b)
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	b.Run("SYN", func(b *testing.B) {
		benchRun(b, h, ether(rawSegment(client, service4, 7, 0, packet.SYN, linuxOpts(1460, 7), nil)), 1, xdpTX)
	})
	b.Run("forged ACK", func(b *testing.B) {
		benchRun(b, h, ether(rawSegment(client, service4, 8, 99, packet.ACK, nil, nil)), 1000, xdpDrop)
	})
	b.Run("established", func(b *testing.B) {
		ns := nstest.New(b, "sgxdp-bench")
		if err := ns.Do(func() error {
			table, err := conntrack.Open()
			if err != nil {
				return err
			}
			defer table.Close()
			if err := table.Create(handoff.Flow{Client: client, Server: service4, CookieISN: 1, ServerISN: 2,
				ClientWindowScale: 7, ServerWindowScale: 7, Mark: 0x5347}); err != nil {
				return err
			}
			benchRun(b, h, ether(rawSegment(client, service4, 8, 99, packet.ACK, nil, make([]byte, 1400))), 1000, xdpPass)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	})
}
