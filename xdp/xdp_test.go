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
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// verdict is what a program did with a packet, at whichever hook it runs.
type verdict int

const (
	vPass verdict = iota + 1
	vDrop
	vTX
)

func (v verdict) String() string {
	switch v {
	case vPass:
		return "pass"
	case vDrop:
		return "drop"
	case vTX:
		return "tx"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// kind is one of the fast path's programs as the tests run it: the
// program, BPF_PROG_TEST_RUN flags, and what its return codes mean.
type kind struct {
	name  string
	prog  func(*synguardObjects) *ebpf.Program
	flags uint32
	codes map[uint32]verdict
}

// bpfTestSKBChecksumComplete is BPF_F_TEST_SKB_CHECKSUM_COMPLETE: the
// kernel runs the program on a CHECKSUM_COMPLETE skb and fails the run
// (EBADMSG) unless skb->csum still sums the packet afterwards.
const bpfTestSKBChecksumComplete = 1 << 2

var (
	xdpKind = kind{"xdp", func(o *synguardObjects) *ebpf.Program { return o.SynguardXdp }, 0,
		map[uint32]verdict{2: vPass, 1: vDrop, 3: vTX}} // XDP_PASS, XDP_DROP, XDP_TX
	tcKind = kind{"tc", func(o *synguardObjects) *ebpf.Program { return o.SynguardTc }, 0,
		map[uint32]verdict{0xffffffff: vPass, 2: vDrop, 7: vTX}} // TCX_NEXT, TCX_DROP, TC_ACT_REDIRECT
	// kinds are the programs every behaviour test runs against.
	kinds = []kind{xdpKind, tcKind}
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

// harness is the programs and an engine that share a jar and a clock;
// run runs the program of kind.
type harness struct {
	t     testing.TB
	kind  kind
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

func newHarness(t testing.TB, k kind) *harness { return newHarnessEarly(t, k, true) }

// newHarnessEarly is newHarness with early data on or off in both the
// engine and the program.
func newHarnessEarly(t testing.TB, k kind, early bool) *harness {
	t.Helper()
	roottest.Require(t)
	p, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	h := &harness{t: t, kind: k, p: p, clock: &clock{t: time.Unix(1_800_000_030, 0)}, out: &capture{}}
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
		EarlyData:       early,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.w = h.eng.NewWorker(h.out, nil)
	for i, s := range []netip.AddrPort{service4, service6} {
		if err := p.SetService(i, Service{Addr: s, Mode: Cookie, MSS: backend.MSS, WindowScale: backend.WindowScale, SACKPermitted: backend.SACKPermitted, EarlyData: early}); err != nil {
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

// with is the harness running the program of kind k.
func (h *harness) with(k kind) *harness {
	c := *h
	c.kind = k
	return &c
}

// forKinds runs f for each program, on a harness of its own.
func forKinds(t *testing.T, f func(t *testing.T, h *harness)) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) { f(t, newHarness(t, k)) })
	}
}

// run runs the program on frame and returns its verdict and the frame it
// left.
func (h *harness) run(frame []byte) (verdict, []byte) {
	h.t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := h.kind.prog(&h.p.objs).Run(&ebpf.RunOptions{Data: frame, DataOut: out, Flags: h.kind.flags})
	if err != nil {
		h.t.Fatalf("%s: %v", h.kind.name, err)
	}
	v, ok := h.kind.codes[ret]
	if !ok {
		h.t.Fatalf("%s: return code %d is no verdict of the program's", h.kind.name, int32(ret))
	}
	return v, out
}

// engineReply is what the engine sends for ip, the IP packet alone.
func (h *harness) engineReply(ip []byte) (nf.Verdict, []byte) {
	h.out.pkts = nil
	v := h.w.Handle(ip, nf.Prerouting, 0)
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
		if ret != vPass {
			h.t.Fatalf("%s %s: a SYN packet.Parse rejects (%v) got verdict %v, want pass", h.kind.name, what, parseErr, ret)
		}
	case want == nil:
		if v != nf.Drop || ret != vDrop {
			h.t.Fatalf("%s %s: engine sent nothing (verdict %v), program verdict %v; want both to refuse", h.kind.name, what, v, ret)
		}
	default:
		if ret != vTX {
			h.t.Fatalf("%s %s: program verdict %v, want tx", h.kind.name, what, ret)
		}
		if !bytes.Equal(out[0:6], macA) || !bytes.Equal(out[6:12], macB) {
			h.t.Fatalf("%s %s: Ethernet addresses not swapped: % x", h.kind.name, what, out[:12])
		}
		got := out[14 : 14+len(want)]
		if !bytes.Equal(got, want) {
			h.t.Fatalf("%s %s: SYN-ACKs differ\nengine:  % x\nprogram: % x", h.kind.name, what, want, got)
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

// TestSYNACKMatchesEngine: for both programs, both families, every option
// set, and keys of both parities, the program's SYN-ACK is the engine's,
// byte for byte: with early data's window, and with a zero window.
func TestSYNACKMatchesEngine(t *testing.T) {
	forKinds(t, testSYNACKMatchesEngine)
	for _, k := range kinds {
		t.Run(k.name+" zero window", func(t *testing.T) { testSYNACKMatchesEngine(t, newHarnessEarly(t, k, false)) })
	}
}

func testSYNACKMatchesEngine(t *testing.T, h *harness) {
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

// TestTCKeepsChecksumComplete: on an skb the driver handed up as
// CHECKSUM_COMPLETE, the tc program leaves skb->csum summing the packet,
// whatever it does with it; the kernel's test run fails with EBADMSG
// otherwise. A SYN-ACK of the SYN's length is written over it with
// BPF_F_RECOMPUTE_CSUM. (A shorter one is trimmed first, which makes the
// skb CHECKSUM_NONE, __skb_trim_rcsum; the test run checks skb->csum even
// then, so that case cannot be run here.)
func TestTCKeepsChecksumComplete(t *testing.T) {
	k := tcKind
	k.name, k.flags = "tc CHECKSUM_COMPLETE", bpfTestSKBChecksumComplete
	h := newHarness(t, k)
	for _, fam := range []struct{ client, server netip.AddrPort }{
		{netip.MustParseAddrPort("198.51.100.7:40000"), service4},
		{netip.MustParseAddrPort("[2001:db8:c::7]:40000"), service6},
	} {
		// MSS, NOP, window scale, NOP, NOP, SACK-permitted: the
		// SYN-ACK announces all three in as many bytes.
		syn := rawSegment(fam.client, fam.server, 0x2000, 0, packet.SYN, optionSets()["no timestamps"], nil)
		if _, want := h.engineReply(syn); len(want) != len(syn) {
			t.Fatalf("%s: the engine's SYN-ACK has %d bytes, the SYN %d: the case needs them equal", fam.server, len(want), len(syn))
		}
		h.compareSYN("SYN-ACK as long as the SYN", syn)
		for _, tt := range []struct {
			name string
			ip   []byte
			want verdict
		}{
			{"forged ACK", rawSegment(fam.client, fam.server, 0x2001, 99, packet.ACK, nil, []byte("x")), vDrop},
			{"RST", rawSegment(fam.client, fam.server, 0x2001, 0, packet.RST, nil, nil), vPass},
			{"SYN to an unprotected port", rawSegment(fam.client, netip.AddrPortFrom(fam.server.Addr(), 80), 1, 0, packet.SYN, nil, nil), vPass},
		} {
			if got, _ := h.run(ether(tt.ip)); got != tt.want {
				t.Errorf("%s %s: verdict %v, want %v", fam.server, tt.name, got, tt.want)
			}
		}
	}
}

// renewAt is Renew with the program's idea of now set to now.
func (p *Program) renewAt(keys cookies.EpochKeys, now, deadline time.Time) error {
	return p.renew(keys, now, deadline)
}

// FuzzSYNACKMatchesEngine feeds SYNs with arbitrary option bytes and
// payloads to the engine and both programs: whatever the engine makes of
// them, each program makes the same, or leaves them to the engine.
func FuzzSYNACKMatchesEngine(f *testing.F) {
	for _, opts := range optionSets() {
		f.Add(opts, uint32(7), false, []byte(nil))
		f.Add(opts, uint32(0xffffffff), true, []byte("early data"))
	}
	h := newHarness(f, xdpKind)
	f.Fuzz(func(t *testing.T, opts []byte, seq uint32, v6 bool, payload []byte) {
		if len(opts) > 40 || len(payload) > 1200 {
			return
		}
		src, dst := netip.MustParseAddrPort("198.51.100.7:40000"), service4
		if v6 {
			src, dst = netip.MustParseAddrPort("[2001:db8:c::7]:40000"), service6
		}
		h.t = t
		h.renew() // the program's clock runs on; a long fuzz run would leave the harness's epoch
		for _, k := range kinds {
			h.with(k).compareSYN("fuzzed SYN", rawSegment(src, dst, seq, 0, packet.SYN, opts, payload))
		}
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

// TestACKs: each program passes handshake ACKs with a valid cookie (and
// zero-window probes) and drops forged ones, through the next epoch.
func TestACKs(t *testing.T) { forKinds(t, testACKs) }

func testACKs(t *testing.T, h *harness) {
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
			want verdict
		}{
			{"handshake ACK", valid, vPass},
			{"zero-window probe", rawSegment(c, s, isn, cookie+1, packet.ACK, nil, nil), vPass},
			{"ACK with data", rawSegment(c, s, isn+1, cookie+1, packet.ACK|packet.PSH, nil, []byte("GET /")), vPass},
			{"forged", rawSegment(c, s, isn+1, cookie+2, packet.ACK, nil, nil), vDrop},
			{"forged with data", rawSegment(c, s, isn+1, cookie^0x100, packet.ACK, nil, []byte("x")), vDrop},
			{"probe seq with data", rawSegment(c, s, isn, cookie+1, packet.ACK, nil, []byte("x")), vDrop},
			{"another client's cookie", rawSegment(netip.AddrPortFrom(c.Addr(), c.Port()+1), s, isn+1, cookie+1, packet.ACK, nil, nil), vDrop},
		} {
			if got, _ := h.run(ether(tt.ip)); got != tt.want {
				t.Errorf("%s %s: verdict %v, want %v", s, tt.name, got, tt.want)
			}
		}
		// The cookie stays valid through the next epoch, and not after.
		start := h.clock.t
		h.clock.t = start.Add(cookies.DefaultPeriod)
		h.renew()
		if got, _ := h.run(ether(valid)); got != vPass {
			t.Errorf("%s: a cookie of the last epoch: verdict %v, want pass", s, got)
		}
		h.clock.t = start.Add(2 * cookies.DefaultPeriod)
		h.renew()
		if got, _ := h.run(ether(valid)); got != vDrop {
			t.Errorf("%s: a cookie two epochs old: verdict %v, want drop", s, got)
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
func TestPassesWhatItDoesNotHandle(t *testing.T) { forKinds(t, testPassesWhatItDoesNotHandle) }

func testPassesWhatItDoesNotHandle(t *testing.T, h *harness) {
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
		if got, _ := h.run(tt.frame); got != vPass {
			t.Errorf("%s: verdict %v, want pass", tt.name, got)
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
	if got, _ := h.run(ether(syn)); got != vPass {
		t.Errorf("SYN in passthrough: verdict %v, want pass", got)
	}
	if got, _ := h.run(ether(forged)); got != vDrop {
		t.Errorf("forged ACK in passthrough: verdict %v, want drop", got)
	}
	set(Observe)
	for name, f := range map[string][]byte{"SYN": syn, "forged ACK": forged} {
		if got, _ := h.run(ether(f)); got != vPass {
			t.Errorf("%s in observe mode: verdict %v, want pass", name, got)
		}
	}
	set(Cookie)
	if got, _ := h.run(ether(syn)); got != vTX {
		t.Fatalf("SYN in cookie mode: verdict %v, want tx", got)
	}

	// An engine that stopped renewing: past the deadline, everything
	// passes and the NFQUEUE path decides.
	if err := h.p.renew(h.jar.EpochKeys(h.clock.t), h.clock.t, h.clock.t.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string][]byte{"SYN": syn, "forged ACK": forged} {
		if got, _ := h.run(ether(f)); got != vPass {
			t.Errorf("%s past the deadline: verdict %v, want pass", name, got)
		}
	}
	// Keys that do not cover now (an epoch the engine has not handed
	// over) count as stale too.
	if err := h.p.renew(h.jar.EpochKeys(h.clock.t), h.clock.t.Add(5*cookies.DefaultPeriod), h.clock.t.Add(10*cookies.DefaultPeriod)); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.run(ether(syn)); got != vPass {
		t.Errorf("SYN with keys of other epochs: verdict %v, want pass", got)
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
func TestEstablishedFlowsPass(t *testing.T) { forKinds(t, testEstablishedFlowsPass) }

func testEstablishedFlowsPass(t *testing.T, h *harness) {
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
			if got, _ := h.run(ack); got != vDrop {
				return fmt.Errorf("%s: ACK of no connection: verdict %v, want drop", fl.server, got)
			}
			if err := table.Create(handoff.Flow{Client: fl.client, Server: fl.server, CookieISN: 1, ServerISN: 2,
				ClientWindowScale: 7, ServerWindowScale: 7, Mark: 0x5347}); err != nil {
				return err
			}
			if got, _ := h.run(ack); got != vPass {
				return fmt.Errorf("%s: ACK of a tracked connection: verdict %v, want pass", fl.server, got)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// benchRun times the program on frame with BPF_PROG_TEST_RUN, repeat runs
// at a time in the kernel, and reports the kernel's own mean time per run
// (what Benchmark returns). A frame the program rewrites (a SYN) must run
// once per call: the kernel repeats a run on the frame the last one left.
func benchRun(b *testing.B, h *harness, frame []byte, repeat int, want verdict) {
	var total time.Duration
	prog := h.kind.prog(&h.p.objs)
	for b.Loop() {
		h.renew() // a long run outlasts the deadline of a single renewal
		ret, d, err := prog.Benchmark(frame, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		if got := h.kind.codes[ret]; got != want {
			b.Fatalf("verdict %v (%d), want %v", got, int32(ret), want)
		}
		total += d
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
}

// BenchmarkProgram times each program's ways through: a SYN answered with
// a SYN-ACK, a forged ACK dropped after the conntrack lookup and two MACs,
// a segment to no service passed after the service lookup, and a segment
// of an established flow passed after the conntrack lookup.
func BenchmarkProgram(b *testing.B) {
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	for _, k := range kinds {
		h := newHarness(b, k)
		b.Run(k.name+"/SYN", func(b *testing.B) {
			benchRun(b, h, ether(rawSegment(client, service4, 7, 0, packet.SYN, linuxOpts(1460, 7), nil)), 1, vTX)
		})
		b.Run(k.name+"/forged ACK", func(b *testing.B) {
			benchRun(b, h, ether(rawSegment(client, service4, 8, 99, packet.ACK, nil, nil)), 1000, vDrop)
		})
		b.Run(k.name+"/not a service", func(b *testing.B) {
			// A segment from a service to its client, as a gateway's
			// backend-side link carries them.
			benchRun(b, h, ether(rawSegment(service4, client, 8, 99, packet.ACK, nil, make([]byte, 1400))), 1000, vPass)
		})
		b.Run(k.name+"/established", func(b *testing.B) {
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
				benchRun(b, h, ether(rawSegment(client, service4, 8, 99, packet.ACK, nil, make([]byte, 1400))), 1000, vPass)
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestEarlyData: behind a cookie ACK that passed, the program passes the
// flow's next segments (the request, which carries the cookie but not the
// ISN it binds) and nothing that only looks like them.
func TestEarlyData(t *testing.T) { forKinds(t, testEarlyData) }

func testEarlyData(t *testing.T, h *harness) {
	for _, fam := range []struct{ client, server netip.AddrPort }{
		{netip.MustParseAddrPort("198.51.100.8:40000"), service4},
		{netip.MustParseAddrPort("[2001:db8:c::8]:40000"), service6},
	} {
		c, s := fam.client, fam.server
		const isn = 0x5000
		valid, cookie := h.cookieACK(c, s, isn)
		second := rawSegment(c, s, isn+1+1400, cookie+1, packet.ACK|packet.PSH, nil, []byte("more of the request"))
		if got, _ := h.run(ether(second)); got != vDrop {
			t.Fatalf("%s: a second segment before its flow's ACK passed: verdict %v, want drop", s, got)
		}
		if got, _ := h.run(ether(valid)); got != vPass {
			t.Fatalf("%s: cookie ACK: verdict %v", s, got)
		}
		other := netip.AddrPortFrom(c.Addr(), c.Port()+1)
		for _, tt := range []struct {
			name string
			ip   []byte
			want verdict
		}{
			{"second segment", second, vPass},
			{"last segment of the early window", rawSegment(c, s, isn+1+0xffff, cookie+1, packet.ACK, nil, []byte("x")), vPass},
			{"past an unscaled window", rawSegment(c, s, isn+1+0x10000, cookie+1, packet.ACK, nil, []byte("x")), vDrop},
			{"before the first byte", rawSegment(c, s, isn, cookie+1, packet.ACK, nil, []byte("x")), vDrop},
			{"another cookie", rawSegment(c, s, isn+1+1400, cookie+2, packet.ACK, nil, []byte("x")), vDrop},
			{"another flow", rawSegment(other, s, isn+1+1400, cookie+1, packet.ACK, nil, []byte("x")), vDrop},
			{"no payload", rawSegment(c, s, isn+1+1400, cookie+1, packet.ACK, nil, nil), vDrop},
		} {
			if got, _ := h.run(ether(tt.ip)); got != tt.want {
				t.Errorf("%s %s: verdict %v, want %v", s, tt.name, got, tt.want)
			}
		}
	}
	c, _ := h.p.Counters(0)
	if c.EarlyData != 2 {
		t.Errorf("IPv4 counters %+v: want 2 early segments passed", c)
	}

	// Without early data the same segment is a forged ACK.
	off := newHarnessEarly(t, h.kind, false)
	c4 := netip.MustParseAddrPort("198.51.100.9:40000")
	valid, cookie := off.cookieACK(c4, service4, 0x6000)
	if got, _ := off.run(ether(valid)); got != vPass {
		t.Fatalf("cookie ACK: verdict %v", got)
	}
	if got, _ := off.run(ether(rawSegment(c4, service4, 0x6001+1400, cookie+1, packet.ACK, nil, []byte("x")))); got != vDrop {
		t.Fatalf("early data off: second segment verdict %v, want drop", got)
	}
}

// TestTickCallsMatchLibrary: the control loop's raw element calls read and
// write what cilium/ebpf's own calls do: each service's counters summed
// over CPUs, an unknown index an error, and the control block renewed.
func TestTickCallsMatchLibrary(t *testing.T) {
	h := newHarness(t, xdpKind)
	c, s := netip.MustParseAddrPort("198.51.100.7:40000"), service4
	valid, cookie := h.cookieACK(c, s, 0x1000)
	h.run(ether(valid))
	h.run(ether(rawSegment(c, s, 0x1001, cookie+2, packet.ACK, nil, nil)))
	h.run(ether(rawSegment(c, s, 0x1001, cookie+3, packet.ACK, nil, nil)))
	for i := range 2 {
		got, err := h.p.Counters(i)
		if err != nil {
			t.Fatal(err)
		}
		var per []synguardSvcCounters
		if err := h.p.objs.Counters.Lookup(uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		var want [len(synguardSvcCounters{}.N)]uint64
		for _, c := range per {
			for j, n := range c.N {
				want[j] += n
			}
		}
		if got.ACKValid != want[cACKValid] || got.ACKInvalid != want[cACKInvalid] || got.SYNReceived != want[cSYNReceived] {
			t.Errorf("service %d: counters %+v, library reads %v", i, got, want)
		}
		if i == 0 && (got.ACKValid != 1 || got.ACKInvalid != 2) {
			t.Errorf("service 0: counters %+v, want 1 valid and 2 invalid ACKs", got)
		}
	}
	if _, err := h.p.Counters(1 << 20); err == nil {
		t.Error("counters of an index past the map: no error")
	}

	deadline := h.clock.t.Add(42 * time.Second)
	keys := h.jar.EpochKeys(h.clock.t)
	if err := h.p.renewAt(keys, h.clock.t, deadline); err != nil {
		t.Fatal(err)
	}
	var ctl synguardEngineControl
	if err := h.p.objs.Control.Lookup(uint32(0), &ctl); err != nil {
		t.Fatal(err)
	}
	if ctl.Keys != keys.Keys || ctl.EpochBase != keys.First {
		t.Errorf("control block keys %v epoch %d, want %v epoch %d", ctl.Keys, ctl.EpochBase, keys.Keys, keys.First)
	}
	tai, err := clockNow(unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Duration(int64(ctl.DeadlineTai) - tai); d < 41*time.Second || d > 43*time.Second {
		t.Errorf("control block deadline %v from now on the TAI clock, want 42s", d)
	}
}
