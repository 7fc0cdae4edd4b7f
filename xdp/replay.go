package xdp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
)

// ReplayEvent is what the tc programs tell the engine of a flow whose SYN
// they replayed (Service.ReplayIfindex), through the handshakes ring
// (Handshakes): the SYN
// went out (Answered false), or the backend answered it and was ACKed,
// and the client's window opened (Answered true). The engine then owns
// the flow's retries, and once it is answered makes its conntrack entry.
type ReplayEvent struct {
	Service                      int
	Answered                     bool
	Client, Server               netip.AddrPort
	Cookie, ClientISN, ServerISN uint32
	ClientWindow                 uint16              // the window field of the client's ACK
	ServerScale                  cookies.WindowScale // of the backend's SYN-ACK; NoWindowScale when it has none
}

// synguard.c's SAMPLE_EVENT flag and event kinds. A kick only wakes the
// reader (hs_wake_fire) and carries nothing.
const (
	sampleEvent = 0x80000000
	evReplayed  = 1
	evAnswered  = 2
	evKick      = 3
)

// The event's body, as synguard.c lays it out behind the record's first
// two words.
var (
	evBodyLen    = int(unsafe.Sizeof(synguardHsEvent{})) - evBodyStart
	evBodyStart  = int(unsafe.Offsetof(synguardHsEvent{}.F))
	evKind       = int(unsafe.Offsetof(synguardHsEvent{}.Kind)) - evBodyStart
	evServerWS   = int(unsafe.Offsetof(synguardHsEvent{}.ServerWs)) - evBodyStart
	evClientWin  = int(unsafe.Offsetof(synguardHsEvent{}.ClientWindow)) - evBodyStart
	evCookie     = int(unsafe.Offsetof(synguardHsEvent{}.Cookie)) - evBodyStart
	evISN        = int(unsafe.Offsetof(synguardHsEvent{}.Isn)) - evBodyStart
	evServerISN  = int(unsafe.Offsetof(synguardHsEvent{}.ServerIsn)) - evBodyStart
	flowLen      = int(unsafe.Sizeof(synguardFlow{}))
	flowPorts    = int(unsafe.Offsetof(synguardFlow{}.ClientPort))
	flowFamilyAt = int(unsafe.Offsetof(synguardFlow{}.Family))
)

// Handshakes opens the ring of the tc programs' ReplayEvents, read as
// samples (Sample.ReplayEvent). Only one reader may be open at a time.
func (p *Program) Handshakes() (*SampleReader, error) {
	r, err := openSampleRing(p.objs.Handshakes.FD(), int(p.objs.Handshakes.MaxEntries()))
	if err != nil {
		return nil, fmt.Errorf("xdp: open the handshakes ring: %w", err)
	}
	return r, nil
}

// ReplayEvent decodes the event a sample carries; ok is false for a kick or a
// sampled SYN.
func (s Sample) ReplayEvent() (ev ReplayEvent, ok bool) {
	b := s.Frame
	if !s.Event || len(b) < evBodyLen {
		return ReplayEvent{}, false
	}
	client, server, ok := flowAddrs(b[:flowLen])
	if !ok {
		return ReplayEvent{}, false
	}
	ev = ReplayEvent{
		Service:      s.Service,
		Answered:     b[evKind] == evAnswered,
		Client:       client,
		Server:       server,
		Cookie:       binary.NativeEndian.Uint32(b[evCookie:]),
		ClientISN:    binary.NativeEndian.Uint32(b[evISN:]),
		ServerISN:    binary.NativeEndian.Uint32(b[evServerISN:]),
		ClientWindow: binary.NativeEndian.Uint16(b[evClientWin:]),
		ServerScale:  cookies.NoWindowScale,
	}
	if ws := b[evServerWS]; ws != 0xff {
		ev.ServerScale = min(cookies.WindowScale(ws), cookies.MaxWindowScale)
	}
	return ev, b[evKind] == evReplayed || b[evKind] == evAnswered
}

// flowAddrs reads a struct flow: addresses as IPv4-mapped or IPv6, ports
// in network order.
func flowAddrs(b []byte) (client, server netip.AddrPort, ok bool) {
	c, s := netip.AddrFrom16([16]byte(b[0:16])), netip.AddrFrom16([16]byte(b[16:32]))
	switch b[flowFamilyAt] {
	case 4:
		c, s = c.Unmap(), s.Unmap()
	case 6:
	default:
		return netip.AddrPort{}, netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(c, binary.BigEndian.Uint16(b[flowPorts:])),
		netip.AddrPortFrom(s, binary.BigEndian.Uint16(b[flowPorts+2:])), true
}

// flowKey is the struct flow of client and server.
func flowKey(client, server netip.AddrPort) synguardFlow {
	f := synguardFlow{Client: client.Addr().As16(), Server: server.Addr().As16(), Family: 6}
	if client.Addr().Is4() {
		f.Family = 4
	}
	// The ports are __be16: their bytes in network order.
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&f.ClientPort))[:], client.Port())
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&f.ServerPort))[:], server.Port())
	return f
}

// replaySlotBits is synguard.c's REPLAY_SLOT_BITS.
const replaySlotBits = 15

// replaySlots is the replay_slots array (synguard.c), mapped into the
// process: how many records replay_flows may hold for the flows of each
// slot. The programs count a record before they add it; the engine
// uncounts one after it took it out for good.
type replaySlots struct {
	mem []byte
}

// mapReplaySlots maps m, the replay_slots array, into the process.
func mapReplaySlots(m *ebpf.Map) (*replaySlots, error) {
	size := int(m.MaxEntries() * m.ValueSize())
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("xdp: map replay_slots: %w", err)
	}
	return &replaySlots{mem: mem}, nil
}

// of is flow k's count (synguard.c replay_slot).
func (r *replaySlots) of(k *synguardFlow) *uint64 {
	x := binary.NativeEndian.Uint32(k.Client[12:]) ^ (uint32(k.ClientPort)<<16 | uint32(k.ServerPort))
	i := (x * 0x9e3779b1) >> (32 - replaySlotBits)
	return (*uint64)(unsafe.Pointer(&r.mem[i*8]))
}

// add counts n records (1 or -1) for flow k; nothing once closed. Its
// callers and close hold the forget call's lock.
func (r *replaySlots) add(k *synguardFlow, n int64) {
	if r.mem == nil {
		return
	}
	atomic.AddUint64(r.of(k), uint64(n))
}

func (r *replaySlots) close() error {
	if r == nil || r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}

// Endings are how a flow completed by the tc programs ended while they
// translated it, before its conntrack entry existed. Replaced says the
// record is another connection's, on the same ports: the flow is over,
// its client having reused them.
type Endings struct {
	ClientFIN, ServerFIN, RST bool
	Replaced                  bool
}

// over says the flow ended: both FINs, or an RST.
func (e Endings) over() bool { return e.RST || e.ClientFIN && e.ServerFIN }

// endings reads a record of the flow whose cookie is cookie.
func endings(v *synguardReplayFlow, cookie uint32) Endings {
	if v.Cookie != cookie {
		return Endings{Replaced: true}
	}
	return Endings{ClientFIN: v.ClientFin != 0, ServerFIN: v.ServerFin != 0, RST: v.Rst != 0}
}

// ForgetReplayed deletes the tc programs' record of the flow from client
// to server whose cookie is cookie, once its conntrack entry carries it:
// its segments then go to the kernel's stack. It returns how the flow
// ended while the programs translated it, and false when there was no
// record. A record of another connection on the ports stays (Replaced).
func (p *Program) ForgetReplayed(client, server netip.AddrPort, cookie uint32) (Endings, bool, error) {
	c := p.forget
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.lookupAndDelete(p.objs.ReplayFlows, flowKey(client, server)); err != nil {
		if err == unix.ENOENT {
			return Endings{}, false, nil
		}
		return Endings{}, false, fmt.Errorf("xdp: forget flow %s-%s: %w", client, server, err)
	}
	e := endings(&c.value, cookie)
	var err error
	if e.Replaced {
		// Taken out in one call, so that no FIN of the flow slips
		// between reading and deleting: put back, unless the programs
		// recorded a newer connection since. Put back, it stays counted.
		if err = c.insert(p.objs.ReplayFlows); err == nil {
			return e, true, nil
		}
		if err == unix.EEXIST {
			err = nil
		} else {
			err = fmt.Errorf("xdp: keep the record of %s-%s: %w", client, server, err)
		}
	}
	p.slots.add(&c.key, -1)
	return e, true, err
}

// ReplayedEndings returns the endings the tc programs' record of the flow
// from client to server whose cookie is cookie noted so far (Replaced for
// another connection's record), and false when there is no record. The
// record stays: it translates the flow's last segments until ForgetEnded.
func (p *Program) ReplayedEndings(client, server netip.AddrPort, cookie uint32) (Endings, bool) {
	c := p.forget
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lookup(p.objs.ReplayFlows, flowKey(client, server)) != nil {
		return Endings{}, false
	}
	return endings(&c.value, cookie), true
}

// ForgetEnded deletes the tc programs' record of the flow from client to
// server whose cookie is cookie once it says the flow is over (both FINs,
// or an RST), and never that of a later connection on the same ports. A
// flow still closing keeps its record, for the LRU map to forget.
func (p *Program) ForgetEnded(client, server netip.AddrPort, cookie uint32) error {
	c := p.forget
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.lookup(p.objs.ReplayFlows, flowKey(client, server))
	if e := endings(&c.value, cookie); err == nil && !e.Replaced && e.over() {
		if err = c.delete(p.objs.ReplayFlows); err == nil {
			p.slots.add(&c.key, -1)
		}
	}
	if err != nil && err != unix.ENOENT {
		return fmt.Errorf("xdp: forget flow %s-%s: %w", client, server, err)
	}
	return nil
}

// AttachServiceSide attaches the service side's tc program at ingress of
// the link named name, one services are reached through, unless it is
// there already: it completes the backend's handshake of the SYNs the
// client side replayed.
func (p *Program) AttachServiceSide(name string, ifindex int) error {
	if _, ok := p.serviceSide[ifindex]; ok {
		return nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Program: p.objs.SynguardTcBackend, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("xdp: attach the service side to %s: %w", name, err)
	}
	if p.serviceSide == nil {
		p.serviceSide = make(map[int]link.Link)
	}
	p.serviceSide[ifindex] = l
	return nil
}

// ReplayedPending returns the tc programs' record of the flow from client
// to server when they replayed its SYN and have not ACKed its backend
// (its SYN-ACK still to come, or left to the queue): what the engine
// needs to take the flow over (ReplayEvent, Answered false, Service
// unset).
func (p *Program) ReplayedPending(client, server netip.AddrPort) (ReplayEvent, bool) {
	c := p.forget
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lookup(p.objs.ReplayFlows, flowKey(client, server)) != nil {
		return ReplayEvent{}, false
	}
	v := c.value
	if v.State != rsSYNSent && v.State != rsDeferred {
		return ReplayEvent{}, false
	}
	return ReplayEvent{Client: client, Server: server, Cookie: v.Cookie, ClientISN: v.Isn,
		ClientWindow: v.ClientWindow, ServerScale: cookies.NoWindowScale}, true
}

// synguard.c's replay_state.
const (
	rsSYNSent  = 1
	rsDeferred = 2
)
