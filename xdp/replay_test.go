package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// replayIfindex is any interface index: BPF_PROG_TEST_RUN reports the
// redirect without performing it.
const replayIfindex = 1

// setReplay points both of the harness's services at replayIfindex.
func (h *harness) setReplay(early bool) {
	h.t.Helper()
	for i, s := range []netip.AddrPort{service4, service6} {
		if err := h.p.SetService(i, Service{Addr: s, Mode: Cookie, MSS: backend.MSS, WindowScale: backend.WindowScale,
			SACKPermitted: backend.SACKPermitted, EarlyData: early, ReplayIfindex: replayIfindex}); err != nil {
			h.t.Fatal(err)
		}
	}
}

// engineReplyAt is engineReply for a packet queued at hook: a cookie ACK
// reaches the engine from filter FORWARD, where it meets no entry.
func (h *harness) engineReplyAt(ip []byte, hook nf.Hook) (nf.Verdict, []byte) {
	h.out.pkts = nil
	v := h.w.Handle(ip, hook, 0)
	h.w.Flush()
	if len(h.out.pkts) == 0 {
		return v, nil
	}
	return v, h.out.pkts[0]
}

// TestReplaySYNMatchesEngine: with ReplayIfindex set, the tc program turns
// a pure cookie ACK into the very SYN the engine replays to the backend,
// for every option set a cookie carries, both families and both window
// settings, and sends it on with the frame's Ethernet header left for the
// redirect to rewrite.
func TestReplaySYNMatchesEngine(t *testing.T) {
	for _, early := range []bool{true, false} {
		t.Run(fmt.Sprintf("early=%v", early), func(t *testing.T) {
			h := newHarnessEarly(t, tcKind, early)
			h.setReplay(early)
			sets := optionSets()
			names := make([]string, 0, len(sets))
			for name := range sets {
				names = append(names, name)
			}
			sort.Strings(names)
			replayed := 0
			for _, fam := range []struct {
				client netip.Addr
				server netip.AddrPort
			}{
				{netip.MustParseAddr("198.51.100.20"), service4},
				{netip.MustParseAddr("2001:db8:c::20"), service6},
			} {
				for i, name := range names {
					c := netip.AddrPortFrom(fam.client, uint16(41000+i))
					isn := uint32(0xfffff000) + uint32(i)*0x101 // across the wrap, too
					_, synack := h.engineReply(rawSegment(c, fam.server, isn, 0, packet.SYN, sets[name], nil))
					if synack == nil {
						continue // refused (amplification guard): no cookie to return
					}
					var sa packet.Packet
					if err := packet.Parse(synack, &sa); err != nil {
						t.Fatal(err)
					}
					ack := withWindow(rawSegment(c, fam.server, isn+1, sa.Seq+1, packet.ACK, nil, nil), uint16(100+i*4099))
					v, want := h.engineReplyAt(ack, nf.Forward)
					if v != nf.Drop || want == nil {
						t.Fatalf("%s %s: the engine did not replay (verdict %v)", fam.server, name, v)
					}
					frame := ether(ack)
					ret, out := h.run(frame)
					if ret != vTX {
						t.Fatalf("%s %s: verdict %v, want the redirect", fam.server, name, ret)
					}
					if !bytes.Equal(out[:14], frame[:14]) {
						t.Fatalf("%s %s: Ethernet header changed: % x", fam.server, name, out[:14])
					}
					if got := out[14 : 14+len(want)]; !bytes.Equal(got, want) {
						t.Fatalf("%s %s: replayed SYNs differ\nengine:  % x\nprogram: % x", fam.server, name, want, got)
					}
					replayed++
				}
			}
			if replayed < len(names) {
				t.Fatalf("only %d of %d cases had a cookie to return", replayed, 2*len(names))
			}
			var n uint64
			for i := range 2 {
				c, err := h.p.Counters(i)
				if err != nil {
					t.Fatal(err)
				}
				n += c.SYNReplayed
			}
			a, err := h.p.Actions()
			if err != nil {
				t.Fatal(err)
			}
			if n != uint64(replayed) || a.Forward != uint64(replayed) {
				t.Errorf("counted %d replayed SYNs and %d forwarded, want %d each", n, a.Forward, replayed)
			}
		})
	}
}

// withWindow sets the TCP window of ip, an IP packet from rawSegment, and
// its checksum.
func withWindow(ip []byte, window uint16) []byte {
	var p packet.Packet
	if err := packet.Parse(ip, &p); err != nil {
		panic(err)
	}
	tcp := ip[p.IPHeaderLen:]
	binary.BigEndian.PutUint16(tcp[14:], window)
	binary.BigEndian.PutUint16(tcp[16:], 0)
	binary.BigEndian.PutUint16(tcp[16:], packet.TCPChecksum(p.Src, p.Dst, tcp))
	return ip
}

// TestReplayOnlyPureACKsAtTC: what the program does not turn into a SYN
// with ReplayIfindex set: a cookie ACK carrying data (the engine holds the
// data and replays), a forged ACK, and anything at the XDP hook.
func TestReplayOnlyPureACKsAtTC(t *testing.T) {
	h := newReplayHarness(t)
	c := netip.MustParseAddrPort("198.51.100.21:42000")
	const isn = 0x7000
	valid, cookie := h.cookieACK(c, service4, isn)
	for _, tt := range []struct {
		name string
		k    kind
		ip   []byte
		want verdict
	}{
		{"request riding on the ACK", tcKind, rawSegment(c, service4, isn+1, cookie+1, packet.ACK|packet.PSH, nil, []byte("GET /")), vPass},
		{"forged", tcKind, rawSegment(c, service4, isn+1, cookie+2, packet.ACK, nil, nil), vDrop},
		{"XDP", xdpKind, valid, vPass},
	} {
		if got, _ := h.with(tt.k).run(ether(tt.ip)); got != tt.want {
			t.Errorf("%s: verdict %v, want %v", tt.name, got, tt.want)
		}
	}
	counters, err := h.p.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	if counters.SYNReplayed != 0 {
		t.Errorf("counters %+v: want no replayed SYN", counters)
	}
}

// backendKind is the service-side program as the tests run it.
var backendKind = kind{"tc backend", func(o *synguardObjects) *ebpf.Program { return o.SynguardTcBackend }, 0,
	map[uint32]verdict{0xffffffff: vPass, 2: vDrop, 7: vTX}}

// linkCapture reads the frames sent out of the loopback link, where
// BPF_PROG_TEST_RUN's skb lives and so where bpf_clone_redirect sends.
type linkCapture struct{ fd int }

func newLinkCapture(t *testing.T) *linkCapture {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: 1}); err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &linkCapture{fd: fd}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// find returns the first frame sent whose IP packet is ip, or nil once
// nothing more comes.
func (c *linkCapture) find(ip []byte) []byte {
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return nil
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		if n >= 14+len(ip) && bytes.Equal(buf[14:14+len(ip)], ip) {
			return bytes.Clone(buf[:n])
		}
	}
}

// TestCompletesHandshakeLikeEngine: the backend's SYN-ACK to a SYN the tc
// program replayed is answered as the engine answers it: the backend's
// ACK, cloned back out of the link it came in on, and the client's window
// update in its place, sent on toward the client; then the flow's
// segments are translated both ways as the engine translates those that
// meet no entry, until the entry exists.
func TestCompletesHandshakeLikeEngine(t *testing.T) {
	h := newReplayHarness(t)
	updates := &capture{}
	h.w.InlineHandOffs(updates)
	backendSide := h.with(backendKind)
	link := newLinkCapture(t)
	backendOpts := []byte{2, 4, 0x05, 0xa8, 4, 2, 1, 3, 3, 9} // MSS 1448, SACK permitted, window scale 9
	for _, fam := range []struct{ client, server netip.AddrPort }{
		{netip.MustParseAddrPort("198.51.100.30:43000"), service4},
		{netip.MustParseAddrPort("[2001:db8:c::30]:43000"), service6},
	} {
		c, s := fam.client, fam.server
		const isn, serverISN = 0x9000, 0xabcd0000
		_, synack := h.engineReply(rawSegment(c, s, isn, 0, packet.SYN, linuxOpts(1460, 7), nil))
		var sa packet.Packet
		if err := packet.Parse(synack, &sa); err != nil {
			t.Fatal(err)
		}
		cookie := sa.Seq
		ack := withWindow(rawSegment(c, s, isn+1, cookie+1, packet.ACK, nil, nil), 501)
		if v, _ := h.run(ether(ack)); v != vTX {
			t.Fatalf("%s: cookie ACK: verdict %v, want the replayed SYN sent on", s, v)
		}
		if v, _ := h.engineReplyAt(ack, nf.Forward); v != nf.Drop {
			t.Fatalf("%s: the engine did not replay: %v", s, v)
		}

		answer := withWindow(rawSegment(s, c, serverISN, isn+1, packet.SYN|packet.ACK, backendOpts, nil), 65160)
		h.out.pkts, updates.pkts = nil, nil
		h.w.Handle(bytes.Clone(answer), nf.Forward, 0)
		h.w.Flush()
		h.w.HandOffs()
		if len(h.out.pkts) != 1 || len(updates.pkts) != 1 {
			t.Fatalf("%s: the engine sent %d packets and %d window updates, want 1 each", s, len(h.out.pkts), len(updates.pkts))
		}
		wantACK, wantUpdate := h.out.pkts[0], updates.pkts[0]

		frame := ether(answer)
		v, out := backendSide.run(frame)
		if v != vTX {
			t.Fatalf("%s: backend SYN-ACK: verdict %v, want the window update sent on", s, v)
		}
		if got := out[14 : 14+len(wantUpdate)]; !bytes.Equal(got, wantUpdate) {
			t.Fatalf("%s: window updates differ\nengine:  % x\nprogram: % x", s, wantUpdate, got)
		}
		clone := link.find(wantACK)
		if clone == nil {
			t.Fatalf("%s: no ACK to the backend went out; want % x", s, wantACK)
		}
		if !bytes.Equal(clone[0:6], frame[6:12]) || !bytes.Equal(clone[6:12], frame[0:6]) {
			t.Errorf("%s: the backend's ACK is not addressed back to its sender: % x", s, clone[:12])
		}
		if v, _ := backendSide.run(frame); v != vPass {
			t.Errorf("%s: the SYN-ACK again: verdict %v, want pass (the engine ACKs again)", s, v)
		}

		// Both directions until the entry exists: as the engine
		// rewrites a segment that meets none.
		for _, seg := range []struct {
			name string
			k    kind
			ip   []byte
		}{
			{"request", tcKind, rawSegment(c, s, isn+1, cookie+1, packet.ACK|packet.PSH, nil, []byte("GET / HTTP/1.1\r\n\r\n"))},
			{"answer", backendKind, rawSegment(s, c, serverISN+1, isn+19, packet.ACK|packet.PSH, nil, []byte("HTTP/1.1 200 OK\r\n\r\n"))},
			{"client FIN", tcKind, rawSegment(c, s, isn+19, cookie+21, packet.ACK|packet.FIN, nil, nil)},
		} {
			want := bytes.Clone(seg.ip)
			if v := h.w.Handle(want, nf.Forward, 0); v != nf.AcceptRewritten {
				t.Fatalf("%s %s: engine verdict %v, want accept_rewritten", s, seg.name, v)
			}
			v, out := h.with(seg.k).run(ether(seg.ip))
			if v != vTX {
				t.Fatalf("%s %s: verdict %v, want sent on", s, seg.name, v)
			}
			if got := out[14 : 14+len(want)]; !bytes.Equal(got, want) {
				t.Fatalf("%s %s: translations differ\nengine:  % x\nprogram: % x", s, seg.name, want, got)
			}
		}
		// The engine can look at the endings, for this flow's cookie
		// only, leaving the record; and forget it only for that cookie.
		if e, found := h.p.ReplayedEndings(c, s, cookie); !found || e != (Endings{ClientFIN: true}) {
			t.Fatalf("%s: endings %+v, found %v; want the client's FIN", s, e, found)
		}
		if e, found := h.p.ReplayedEndings(c, s, cookie+1); !found || e != (Endings{Replaced: true}) {
			t.Fatalf("%s: endings for another cookie %+v, found %v; want the record another connection's", s, e, found)
		}
		// Not over (the client's FIN only), nor another cookie's: kept.
		for _, ck := range []uint32{cookie, cookie + 1} {
			if err := h.p.ForgetEnded(c, s, ck); err != nil {
				t.Fatal(err)
			}
		}
		// Forgetting for another cookie leaves the record; the engine
		// learns of the client's FIN when it forgets the record, and
		// only once.
		if e, found, err := h.p.ForgetReplayed(c, s, cookie+1); err != nil || !found || e != (Endings{Replaced: true}) {
			t.Fatalf("%s: forget for another cookie: endings %+v, found %v, %v; want the record kept as another's", s, e, found, err)
		}
		e, found, err := h.p.ForgetReplayed(c, s, cookie)
		if err != nil || !found || e != (Endings{ClientFIN: true}) {
			t.Fatalf("%s: forget: endings %+v, found %v, %v; want the client's FIN", s, e, found, err)
		}
		if _, found, err := h.p.ForgetReplayed(c, s, cookie); err != nil || found {
			t.Fatalf("%s: forget again: found %v, %v; want nothing", s, found, err)
		}
		if err := h.p.ForgetEnded(c, s, cookie); err != nil {
			t.Fatalf("%s: forget a forgotten record: %v", s, err)
		}
	}
	c, err := h.p.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Completed != 1 || c.Translated != 3 {
		t.Errorf("IPv4 counters %+v: want 1 completed and 3 translated", c)
	}
}

// TestEndedFlowLeavesItsPorts: a flow the programs carried to its end
// before its entry keeps its record for its last segments (the final
// ACK is translated), but a new connection from the same ports, whose
// cookie ACK the old record would take for its own, is replayed as a
// new flow.
func TestEndedFlowLeavesItsPorts(t *testing.T) {
	h := newReplayHarness(t)
	backendSide := h.with(backendKind)
	c := netip.MustParseAddrPort("198.51.100.34:47000")
	const isn, serverISN = 0xd000, 0x7000
	cookie := h.replayCookieACK(t, c, service4, isn)
	answer := backendAnswer(service4, c, serverISN, isn)
	if v, _ := backendSide.run(ether(answer)); v != vTX {
		t.Fatalf("backend SYN-ACK: verdict %v, want the window update sent on", v)
	}
	for _, seg := range []struct {
		name string
		side *harness
		ip   []byte
	}{
		{"client FIN", h, rawSegment(c, service4, isn+1, cookie+1, packet.ACK|packet.FIN, nil, nil)},
		{"backend FIN", backendSide, rawSegment(service4, c, serverISN+1, isn+2, packet.ACK|packet.FIN, nil, nil)},
	} {
		if v, _ := seg.side.run(ether(seg.ip)); v != vTX {
			t.Fatalf("%s: verdict %v, want translated and sent on", seg.name, v)
		}
	}
	final := rawSegment(c, service4, isn+2, cookie+2, packet.ACK, nil, nil)
	v, out := h.run(ether(final))
	var got packet.Packet
	if v != vTX || packet.Parse(out[14:], &got) != nil || got.Ack != serverISN+2 {
		t.Fatalf("final ACK: verdict %v, ack %#x; want it translated to %#x", v, got.Ack, serverISN+2)
	}
	if e, found := h.p.ReplayedEndings(c, service4, cookie); !found || e != (Endings{ClientFIN: true, ServerFIN: true}) {
		t.Fatalf("endings %+v, found %v; want both FINs", e, found)
	}
	if ev, ok := h.p.ReplayedPending(c, service4); ok {
		t.Fatalf("a flow whose backend was ACKed is pending: %+v", ev)
	}
	// A new connection whose cookie the old record would own (within
	// 2^30 past the old one): found by trying ISNs.
	for isn2 := uint32(0xe000); ; isn2 += 0x1000 {
		ack2, cookie2 := h.cookieACK(c, service4, isn2)
		if cookie2-(cookie+1) >= 1<<30 {
			continue
		}
		v, out := h.run(ether(ack2))
		if v != vTX || packet.Parse(out[14:], &got) != nil || got.Flags != packet.SYN || got.Seq != isn2 {
			t.Fatalf("new connection's cookie ACK: verdict %v, %+v; want its SYN replayed", v, got)
		}
		if e, found := h.p.ReplayedEndings(c, service4, cookie2); !found || e.Replaced {
			t.Fatal("the new connection's record is not there")
		}
		// The old flow's forgetting leaves the new one's record.
		if err := h.p.ForgetEnded(c, service4, cookie); err != nil {
			t.Fatal(err)
		}
		if e, _, err := h.p.ForgetReplayed(c, service4, cookie); err != nil || !e.Replaced {
			t.Fatalf("forget the old flow: %+v, %v; want the new connection's record kept", e, err)
		}
		if e, found := h.p.ReplayedEndings(c, service4, cookie2); !found || e.Replaced {
			t.Fatal("the old flow's forgetting took the new connection's record")
		}
		break
	}

	// An ended flow's record, forgotten, is gone.
	c2 := netip.MustParseAddrPort("198.51.100.35:47001")
	ack3, cookie3 := h.cookieACK(c2, service4, isn)
	if v, _ := h.run(ether(ack3)); v != vTX {
		t.Fatalf("cookie ACK: verdict %v", v)
	}
	if v, _ := backendSide.run(ether(backendAnswer(service4, c2, serverISN, isn))); v != vTX {
		t.Fatalf("backend SYN-ACK: verdict %v", v)
	}
	if v, _ := h.run(ether(rawSegment(c2, service4, isn+1, cookie3+1, packet.ACK|packet.RST, nil, nil))); v != vTX {
		t.Fatalf("client RST: verdict %v, want translated", v)
	}
	if err := h.p.ForgetEnded(c2, service4, cookie3); err != nil {
		t.Fatal(err)
	}
	if _, found := h.p.ReplayedEndings(c2, service4, cookie3); found {
		t.Fatal("ForgetEnded left the record of a flow over")
	}
}

// TestDeferredToQueue: a client segment that comes before the backend
// answered the replayed SYN leaves the flow to the queue: it passes, and
// so does the backend's SYN-ACK then, untouched. A flow whose record
// the engine forgot goes to the stack both ways.
func TestDeferredToQueue(t *testing.T) {
	h := newReplayHarness(t)
	backendSide := h.with(backendKind)
	c := netip.MustParseAddrPort("198.51.100.31:44000")
	const isn, serverISN = 0xa000, 0x5000
	cookie := h.replayCookieACK(t, c, service4, isn)
	req := rawSegment(c, service4, isn+1, cookie+1, packet.ACK|packet.PSH, nil, []byte("GET /"))
	if v, out := h.run(ether(req)); v != vPass || !bytes.Equal(out[14:14+len(req)], req) {
		t.Fatalf("request before the backend's answer: verdict %v, want pass, unchanged", v)
	}
	answer := backendAnswer(service4, c, serverISN, isn)
	if v, out := backendSide.run(ether(answer)); v != vPass || !bytes.Equal(out[14:14+len(answer)], answer) {
		t.Fatalf("backend's answer to a deferred flow: verdict %v, want pass, unchanged", v)
	}
	counters, err := h.p.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	if counters.Deferred != 1 || counters.Completed != 0 {
		t.Errorf("counters %+v: want 1 deferred, none completed", counters)
	}
	// What the engine takes the flow over from, when the backend's
	// answer reaches its queue before the event.
	want := ReplayEvent{Client: c, Server: service4, Cookie: cookie, ClientISN: isn, ClientWindow: 64240, ServerScale: cookies.NoWindowScale}
	if ev, ok := h.p.ReplayedPending(c, service4); !ok || ev != want {
		t.Fatalf("pending: %+v, %v; want %+v", ev, ok, want)
	}
	if _, found, err := h.p.ForgetReplayed(c, service4, cookie); err != nil || !found {
		t.Fatalf("forget: found %v, %v", found, err)
	}
	if _, found, _ := h.p.ForgetReplayed(c, service4, cookie); found {
		t.Fatal("forgot the flow twice")
	}
	if ev, ok := h.p.ReplayedPending(c, service4); ok {
		t.Fatalf("pending after the forget: %+v", ev)
	}
	if v, _ := backendSide.run(ether(answer)); v != vPass {
		t.Fatalf("backend segment of a forgotten flow: verdict %v, want pass", v)
	}
}

// TestForgetAllocatesNothing: the engine forgets a record per legitimate
// handshake, without an allocation (or a call the Go scheduler hears of,
// xdp/elem.go).
func TestForgetAllocatesNothing(t *testing.T) {
	h := newHarness(t, tcKind)
	c := netip.MustParseAddrPort("198.51.100.32:45000")
	if n := testing.AllocsPerRun(100, func() {
		if _, found, err := h.p.ForgetReplayed(c, service4, 1); err != nil || found {
			t.Fatalf("forget: found %v, %v; want nothing", found, err)
		}
	}); n != 0 {
		t.Errorf("ForgetReplayed allocates %v times a call, want 0", n)
	}
}

// TestReplayEvents: the tc programs tell the engine, through the
// handshakes ring, of each SYN they replayed and each answer they completed, with
// what the engine needs to take the flow over.
func TestReplayEvents(t *testing.T) {
	h := newReplayHarness(t)
	r := h.handshakes(t)
	c := netip.MustParseAddrPort("[2001:db8:c::32]:45000")
	const isn, serverISN = 0xb000, 0x6000
	ack, cookie := h.cookieACK(c, service6, isn)
	ack = withWindow(ack, 777)
	if v, _ := h.run(ether(ack)); v != vTX {
		t.Fatalf("cookie ACK: verdict %v", v)
	}
	answer := rawSegment(service6, c, serverISN, isn+1, packet.SYN|packet.ACK, []byte{2, 4, 5, 0xa8, 1, 3, 3, 9}, nil)
	if v, _ := h.with(backendKind).run(ether(answer)); v != vTX {
		t.Fatalf("backend SYN-ACK: verdict %v", v)
	}
	want := []ReplayEvent{
		{Service: 1, Client: c, Server: service6, Cookie: cookie, ClientISN: isn, ClientWindow: 777, ServerScale: cookies.NoWindowScale},
		{Service: 1, Answered: true, Client: c, Server: service6, Cookie: cookie, ClientISN: isn, ServerISN: serverISN, ClientWindow: 777, ServerScale: 9},
	}
	r.SetDeadline(time.Now().Add(time.Second))
	for i, w := range want {
		var ev ReplayEvent
		for {
			s, err := r.Read()
			if err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
			if e, ok := s.ReplayEvent(); ok {
				ev = e
				break
			}
		}
		if ev != w {
			t.Errorf("event %d: %+v, want %+v", i, ev, w)
		}
	}
}

// TestHandshakeEventsWakeTheReaderLater: the events are submitted without
// a wake-up, and a timer's kick wakes a reader waiting on the ring: it
// gets the event, then the kick.
func TestHandshakeEventsWakeTheReaderLater(t *testing.T) {
	h := newReplayHarness(t)
	r := h.handshakes(t)
	r.SetDeadline(time.Now().Add(5 * time.Second))
	type read struct {
		s   Sample
		ev  ReplayEvent
		ok  bool
		err error
	}
	reads := make(chan read)
	reader := make(chan string)
	go func() {
		reader <- goroutineID()
		for {
			s, err := r.Read()
			ev, ok := s.ReplayEvent()
			reads <- read{s, ev, ok, err}
			if err != nil {
				return
			}
		}
	}()
	// The reader waits in the network poller before the event is sent:
	// an event already there would be read without a wake-up.
	id := <-reader
	waitFor(t, "the reader to wait on the ring", func() bool { return goroutineState(id) == "IO wait" })
	c := netip.MustParseAddrPort("198.51.100.33:46000")
	ack, _ := h.cookieACK(c, service4, 0xc000)
	sent := time.Now()
	if v, _ := h.run(ether(ack)); v != vTX {
		t.Fatalf("cookie ACK: verdict %v", v)
	}
	got := <-reads
	if got.err != nil || !got.ok || got.ev.Client != c {
		t.Fatalf("first read: %+v, %v; want the replayed SYN's event", got.ev, got.err)
	}
	got = <-reads
	if got.err != nil || got.ok || !isKick(got.s) {
		t.Fatalf("second read: %+v, %v; want the timer's kick", got.s, got.err)
	}
	// Due after the scheduler's next tick (4 ms apart at HZ=250), the
	// timer costs no reprogramming of the CPU's timer inside the
	// handshake (synguard.c HS_WAKE_NS). A timer never fires early.
	if d := time.Since(sent); d < 4*time.Millisecond {
		t.Fatalf("the kick came %v after the event, before a tick's period", d)
	}
	r.Close()
	for got := range reads {
		if got.err != nil {
			break
		}
	}
}

// newReplayHarness is a harness of the client side at tc whose services
// have their SYNs replayed there, with early data.
func newReplayHarness(t *testing.T) *harness {
	h := newHarness(t, tcKind)
	h.setReplay(true)
	return h
}

// backendAnswer is backend s's SYN-ACK (ISN serverISN, MSS 1448) to
// client c's replayed SYN of ISN isn.
func backendAnswer(s, c netip.AddrPort, serverISN, isn uint32) []byte {
	return rawSegment(s, c, serverISN, isn+1, packet.SYN|packet.ACK, []byte{2, 4, 5, 0xa8}, nil)
}

// isKick says s is the wake-up timer's kick (synguard.c hs_wake_fire).
func isKick(s Sample) bool {
	return s.Event && len(s.Frame) > evKind && s.Frame[evKind] == evKick
}

// handshakes opens the handshakes ring, closed when the test ends.
func (h *harness) handshakes(t *testing.T) *SampleReader {
	t.Helper()
	r, err := h.p.Handshakes()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// replayCookieACK runs the cookie ACK of client c's SYN with isn through
// the client side, which must replay it, and returns the cookie.
func (h *harness) replayCookieACK(t *testing.T, c, s netip.AddrPort, isn uint32) uint32 {
	t.Helper()
	ack, cookie := h.cookieACK(c, s, isn)
	if v, _ := h.run(ether(ack)); v != vTX {
		t.Fatalf("%s: cookie ACK: verdict %v, want the replayed SYN sent on", c, v)
	}
	return cookie
}

// waitFor polls cond until it holds, for at most 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReplayNeedsRoomForItsEvent: the tc program replays a SYN only when
// it could reserve the event that tells the engine (which resends the
// SYN and makes the entry); with the ring full, the cookie ACK goes to
// the queue as it would without the fast path, its early flow recorded
// (and only then).
func TestReplayNeedsRoomForItsEvent(t *testing.T) {
	h := newReplayHarness(t)
	replayed := 0
	for i := 0; ; i++ {
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i >> 8)}), uint16(20000+i&0xff))
		ack, _ := h.cookieACK(c, service4, uint32(i)*977)
		v, _ := h.run(ether(ack))
		// A flow replayed here has its record for its next segments;
		// one whose ACK goes to the queue needs its early flow there.
		var ef synguardEarlyFlow
		k := flowKey(c, service4)
		recorded := h.p.objs.EarlyFlows.Lookup(&k, &ef) == nil
		if v == vPass {
			if !recorded {
				t.Fatalf("cookie ACK %d, passed to the queue: no early flow for its next segments", i)
			}
			break
		}
		if v != vTX {
			t.Fatalf("cookie ACK %d: verdict %v", i, v)
		}
		if recorded {
			t.Fatalf("cookie ACK %d, replayed: an early flow recorded as well", i)
		}
		replayed++
		if replayed > 1<<18/8 {
			t.Fatal("the ring never filled")
		}
	}
	// 256 KiB of 64-byte records and their 8-byte headers: the events,
	// and the kicks of the wake-up timer while the ring was less than
	// half full.
	r := h.handshakes(t)
	r.SetDeadline(time.Now())
	events, kicks := 0, 0
	for {
		s, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.ReplayEvent(); ok {
			events++
		} else if isKick(s) {
			kicks++
		} else {
			t.Fatalf("a record neither an event nor a kick: %+v", s)
		}
	}
	if events != replayed {
		t.Errorf("read %d events, want one per replayed SYN, %d", events, replayed)
	}
	if want := 1 << 18 / 72; events+kicks < want-2 || events+kicks > want {
		t.Errorf("replayed %d SYNs (and %d kicks) before the ring filled, want about %d records", replayed, kicks, want)
	}
	c, err := h.p.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	if c.SYNReplayed != uint64(replayed) {
		t.Errorf("counted %d replayed, want %d", c.SYNReplayed, replayed)
	}
}

// TestReplaySlotsCountRecords: the tc program counts each record it adds
// in the flow's slot, the slot the engine's side computes too, once
// however the record is replaced; the engine's forgetting uncounts it,
// and a record of another connection it puts back stays counted. The
// programs look a flow's record up only where its slot counts one.
func TestReplaySlotsCountRecords(t *testing.T) {
	h := newReplayHarness(t)
	backendSide := h.with(backendKind)
	count := func(c, s netip.AddrPort) uint64 {
		k := flowKey(c, s)
		return atomic.LoadUint64(h.p.slots.of(&k))
	}
	total := func() (n int) {
		for i := 0; i < len(h.p.slots.mem); i += 8 {
			n += int(binary.NativeEndian.Uint64(h.p.slots.mem[i:]))
		}
		return n
	}
	type flow struct {
		c, s   netip.AddrPort
		cookie uint32
	}
	rng := rand.New(rand.NewPCG(14, 1))
	var flows []flow
	for i := range 64 {
		port := uint16(1024 + i*997)
		c, s := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(256))}), port), service4
		if i%2 == 1 {
			a := netip.MustParseAddr("2001:db8:c::").As16()
			binary.BigEndian.PutUint32(a[12:], rng.Uint32())
			c, s = netip.AddrPortFrom(netip.AddrFrom16(a), port), service6
		}
		flows = append(flows, flow{c, s, h.replayCookieACK(t, c, s, uint32(0x1000+i))})
		if n := count(c, s); n == 0 {
			t.Fatalf("%s: its record is not counted in the slot the engine computes", c)
		}
	}
	if n := total(); n != len(flows) {
		t.Fatalf("%d records counted, want %d", n, len(flows))
	}

	// A record a new connection on the ports replaces stays counted once.
	f := flows[0]
	const serverISN = 0x7000
	if v, _ := backendSide.run(ether(backendAnswer(f.s, f.c, serverISN, 0x1000))); v != vTX {
		t.Fatalf("backend SYN-ACK: verdict %v", v)
	}
	if v, _ := h.run(ether(rawSegment(f.c, f.s, 0x1001, f.cookie+1, packet.ACK|packet.RST, nil, nil))); v != vTX {
		t.Fatalf("client RST: verdict %v, want translated", v)
	}
	next := h.replayCookieACK(t, f.c, f.s, 0x9000)
	if n := total(); n != len(flows) {
		t.Fatalf("after a record was replaced: %d counted, want %d", n, len(flows))
	}
	// The old flow's forgetting puts the new one's record back, still counted.
	if e, _, err := h.p.ForgetReplayed(f.c, f.s, f.cookie); err != nil || !e.Replaced {
		t.Fatalf("forget the replaced flow: %+v, %v; want the record kept", e, err)
	}
	if n := count(f.c, f.s); n != 1 || total() != len(flows) {
		t.Fatalf("after the record was put back: slot %d, %d counted; want 1, %d", n, total(), len(flows))
	}

	// A translated segment needs its slot: with the slot read as empty,
	// the flow's final ACK is a forged one.
	f = flows[1]
	if v, _ := backendSide.run(ether(backendAnswer(f.s, f.c, serverISN, 0x1001))); v != vTX {
		t.Fatalf("backend SYN-ACK: verdict %v", v)
	}
	final := ether(rawSegment(f.c, f.s, 0x1003, f.cookie+2, packet.ACK, nil, nil))
	slot := func() *uint64 { k := flowKey(f.c, f.s); return h.slots().of(&k) }
	saved := atomic.SwapUint64(slot(), 0)
	if v, _ := h.run(final); v != vDrop {
		t.Fatalf("a record's segment with its slot empty: verdict %v, want drop (not looked up)", v)
	}
	atomic.StoreUint64(slot(), saved)
	if v, _ := h.run(final); v != vTX {
		t.Fatalf("a record's segment: verdict %v, want translated", v)
	}

	// Forgetting uncounts: the ended flow's record and every other.
	if err := h.p.ForgetEnded(flows[0].c, flows[0].s, next); err != nil {
		t.Fatal(err)
	}
	if n := count(flows[0].c, flows[0].s); n != 1 {
		t.Fatalf("ForgetEnded of a flow not over: slot %d, want 1", n)
	}
	for _, f := range flows {
		cookie := f.cookie
		if f == flows[0] {
			cookie = next
		}
		if _, found, err := h.p.ForgetReplayed(f.c, f.s, cookie); err != nil || !found {
			t.Fatalf("%s: forget: found %v, %v", f.c, found, err)
		}
	}
	if n := total(); n != 0 {
		t.Fatalf("%d counted with every record forgotten, want 0", n)
	}
}

// slots is the program's replay_slots, mapped.
func (h *harness) slots() *replaySlots { return h.p.slots }

// TestForgetAfterClose: a forget that comes after the program was closed
// (an engine still stopping) fails, and touches no unmapped count.
func TestForgetAfterClose(t *testing.T) {
	h := newReplayHarness(t)
	c := netip.MustParseAddrPort("198.51.100.36:47002")
	cookie := h.replayCookieACK(t, c, service4, 0xd000)
	if err := h.p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.p.ForgetReplayed(c, service4, cookie); err == nil {
		t.Error("forget after close: no error")
	}
	if err := h.p.ForgetEnded(c, service4, cookie); err == nil {
		t.Error("ForgetEnded after close: no error")
	}
	if h.slots().mem != nil {
		t.Error("the counts are still mapped after close")
	}
}
