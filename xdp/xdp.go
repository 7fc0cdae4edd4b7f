package xdp

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
)

// MaxServices is how many services the program's map holds.
const MaxServices = 256

// Mode is how the fast path is attached to a link.
type Mode uint8

// Modes.
const (
	// ModeAuto attaches natively where that is fast and cannot lose
	// SYN-ACKs, and at tc ingress elsewhere: veth links get tc (native
	// XDP_TX frames on veth are lost unless the peer runs an XDP program,
	// which synguard cannot know, and generic XDP copies every
	// multi-segment packet), other links native mode when their driver
	// supports it and no other XDP program holds the link, tc otherwise.
	// Generic mode is the last resort, on a kernel without tcx (before
	// Linux 6.6).
	ModeAuto Mode = iota
	// ModeNative attaches the XDP program in the driver
	// (XDP_FLAGS_DRV_MODE).
	ModeNative
	// ModeGeneric attaches the XDP program after the kernel built the
	// skb (XDP_FLAGS_SKB_MODE). It works everywhere, but the kernel
	// copies every cloned or multi-segment skb for it, bulk data
	// included.
	ModeGeneric
	// ModeTC attaches the tc program (the same code) at tc ingress
	// through tcx: it sees the skb as the kernel built it, without a
	// copy, and answers SYNs with a redirect out the link.
	ModeTC
	// ModeOff attaches nothing: the NFQUEUE path handles every packet.
	ModeOff
)

var modeNames = [...]string{ModeAuto: "auto", ModeNative: "native", ModeGeneric: "generic", ModeTC: "tc", ModeOff: "off"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode reads --xdp.
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if s == name {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown XDP mode %q: want auto, native, generic, tc or off", s)
}

// ServiceMode is what the program does with a service's packets.
type ServiceMode uint8

// Service modes, as synguard.c numbers them.
const (
	// Passthrough: SYNs pass to the engine's half-open accounting; forged
	// ACKs are dropped.
	Passthrough ServiceMode = 0
	// Cookie: SYNs are answered here; forged ACKs are dropped.
	Cookie ServiceMode = 1
	// Observe: everything passes (the engine's off mode).
	Observe ServiceMode = 2
)

// Service is one protected service as the program sees it.
type Service struct {
	Addr netip.AddrPort
	Mode ServiceMode
	// Lists says the service has allow or deny lists (SetSourceLists):
	// the program looks each SYN's source up in them.
	Lists bool
	// EarlyData opens the SYN-ACK's window to engine.EarlySegments of
	// the announced MSS, as the engine does with Config.EarlyData, and
	// passes the segments that follow a cookie ACK on to the queue.
	EarlyData bool
	// ReplayIfindex, when not 0, is the link the backend is reached
	// through: the tc program turns a pure cookie ACK into the SYN the
	// engine would replay (engine/negotiate.go) and sends it there with
	// bpf_redirect_neigh, rather than passing the ACK to the queue. The
	// XDP program ignores it.
	ReplayIfindex int
	// The options the backend announces, told to clients that offer
	// them: as engine.BackendOptions.
	MSS           uint16
	WindowScale   cookies.WindowScale
	SACKPermitted bool
}

// Counters are one service's counts in the program, summed over CPUs.
type Counters struct {
	SYNReceived        uint64 // SYNs to the service in cookie mode
	SYNACKSent         uint64 // answered with XDP_TX
	AmplificationGuard uint64 // not answered: the SYN-ACK would exceed the SYN
	ACKInvalid         uint64 // forged ACKs dropped
	ACKValid           uint64 // cookie ACKs passed on to the queue
	EarlyData          uint64 // later segments of a flow whose cookie ACK passed, passed on
	SYNDenied          uint64 // SYNs from a denied source, dropped (counted in SYNReceived too)
	SYNReplayed        uint64 // cookie ACKs turned into the backend's SYN and sent on (ReplayIfindex)
	Completed          uint64 // backend SYN-ACKs to those, answered with the ACK and the window update
	Deferred           uint64 // replayed flows whose client segment came first, left to the queue
	Translated         uint64 // segments of completed flows translated and sent on, before their entry
	SACKDropped        uint64 // client segments with options (SACK blocks) of completed flows, dropped
}

// Actions are the program's verdicts, summed over CPUs.
type Actions struct {
	Pass, Drop, TX uint64
	Forward        uint64 // sent on toward a backend (Service.ReplayIfindex)
}

// Attachment is the program on one link.
type Attachment struct {
	Interface string
	Mode      Mode // native, generic or tc
	link      link.Link
}

// Program is the loaded fast path, its XDP and tc programs and the maps
// they share.
type Program struct {
	objs     synguardObjects
	attached []Attachment
	// serviceSide is the service side's tc program on the links
	// services are reached through, by interface index
	// (AttachServiceSide).
	serviceSide map[int]link.Link
	tick        *tickCalls
	forget      *forgetCall
	slots       *replaySlots
}

// Load loads the program into the kernel. It needs CAP_BPF and
// CAP_NET_ADMIN (or root), BTF, and conntrack built in or loaded.
func Load() (*Program, error) {
	tick, err := newTickCalls()
	if err != nil {
		return nil, err
	}
	p := &Program{tick: tick, forget: new(forgetCall)}
	spec, err := loadSynguard()
	if err != nil {
		return nil, fmt.Errorf("xdp: load program: %w", err)
	}
	// A wake-up timer per CPU (synguard.c hs_wake_flags).
	spec.Maps["hs_wakes"].MaxEntries = uint32(len(tick.counters))
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("xdp: load program: %w", ve)
		}
		return nil, fmt.Errorf("xdp: load program: %w", err)
	}
	if p.slots, err = mapReplaySlots(p.objs.ReplaySlots); err != nil {
		p.objs.Close()
		return nil, err
	}
	if err := p.setSampleGap(SampleGap); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// setSampleGap sets the least time between two samples on a CPU.
func (p *Program) setSampleGap(d time.Duration) error {
	if err := p.objs.SampleGap.Update(uint32(0), uint64(d.Nanoseconds()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("xdp: set the sample gap: %w", err)
	}
	return nil
}

// Attach attaches the fast path to the link named name in mode (auto
// picks as ModeAuto says) and returns the mode in effect.
func (p *Program) Attach(name string, mode Mode) (Mode, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("xdp: attach to %s: %w", name, err)
	}
	if mode == ModeOff {
		return 0, fmt.Errorf("xdp: attach to %s: mode off attaches nothing", name)
	}
	var errs []error
	for _, m := range candidates(mode, driver(name)) {
		l, err := p.attach(iface.Index, m)
		if err == nil {
			p.attached = append(p.attached, Attachment{Interface: name, Mode: m, link: l})
			return m, nil
		}
		busy := m != ModeTC && (errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST))
		if busy && mode != ModeAuto {
			return 0, fmt.Errorf("xdp: attach to %s: another XDP program is attached (remove it with 'ip link set dev %s xdp off', or run with --xdp tc or off): %w", name, name, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", m, err))
	}
	return 0, fmt.Errorf("xdp: attach to %s: %w", name, errors.Join(errs...))
}

// candidates are the modes to try, in order, for mode on a link whose
// driver is driver: auto takes the first that attaches.
func candidates(mode Mode, driver string) []Mode {
	switch {
	case mode != ModeAuto:
		return []Mode{mode}
	case driver == "veth":
		// Native XDP_TX frames on veth are lost unless the peer runs an
		// XDP program; generic XDP copies bulk data.
		return []Mode{ModeTC, ModeGeneric}
	default:
		// Native where the driver has it; a link another XDP program
		// holds, or a driver without it, gets tc.
		return []Mode{ModeNative, ModeTC, ModeGeneric}
	}
}

// attach links the program of mode m to link ifindex.
func (p *Program) attach(ifindex int, m Mode) (link.Link, error) {
	switch m {
	case ModeTC:
		// Appended behind any tcx program already there; the program
		// passes with TCX_NEXT, so they and tc filters still see what
		// it lets through.
		return link.AttachTCX(link.TCXOptions{Program: p.objs.SynguardTc, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
	case ModeNative:
		return link.AttachXDP(link.XDPOptions{Program: p.objs.SynguardXdp, Interface: ifindex, Flags: link.XDPDriverMode})
	default:
		return link.AttachXDP(link.XDPOptions{Program: p.objs.SynguardXdp, Interface: ifindex, Flags: link.XDPGenericMode})
	}
}

// Attached lists the links the program is attached to on the clients'
// side.
func (p *Program) Attached() []Attachment { return append([]Attachment(nil), p.attached...) }

// Detach detaches the programs from every link, both sides; the maps
// stay.
func (p *Program) Detach() error {
	var errs []error
	for _, a := range p.attached {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("xdp: detach from %s: %w", a.Interface, err))
		}
	}
	p.attached = nil
	for ifindex, l := range p.serviceSide {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("xdp: detach the service side from link %d: %w", ifindex, err))
		}
	}
	p.serviceSide = nil
	return errors.Join(errs...)
}

// Close detaches the program and releases it.
func (p *Program) Close() error {
	// Unmapped under the lock the engine's forgets take, so that none
	// writes to it after.
	p.forget.mu.Lock()
	err := p.slots.close()
	p.forget.mu.Unlock()
	return errors.Join(p.Detach(), err, p.objs.Close())
}

// SetService writes service index i (its counters' index, below
// MaxServices).
func (p *Program) SetService(i int, s Service) error {
	if i < 0 || i >= MaxServices {
		return fmt.Errorf("xdp: service index %d: the program holds %d services", i, MaxServices)
	}
	k := serviceKey(s.Addr)
	v := synguardSvcVal{Index: uint32(i), Mode: uint8(s.Mode), Mss: s.MSS, Wscale: 0xff}
	if s.WindowScale != cookies.NoWindowScale {
		v.Wscale = uint8(s.WindowScale)
	}
	if s.SACKPermitted {
		v.Sack = 1
	}
	if s.Lists {
		v.Flags |= svcLists
	}
	if s.EarlyData {
		v.Flags |= svcEarly
	}
	if s.ReplayIfindex < 0 || s.ReplayIfindex > math.MaxUint32 {
		return fmt.Errorf("xdp: set service %s: interface index %d", s.Addr, s.ReplayIfindex)
	}
	if s.ReplayIfindex != 0 {
		v.Flags |= svcReplay
		v.ReplayIfindex = uint32(s.ReplayIfindex)
	}
	if err := p.objs.Services.Put(&k, &v); err != nil {
		return fmt.Errorf("xdp: set service %s: %w", s.Addr, err)
	}
	return nil
}

// serviceKey is the map key of a service: IPv4 as the IPv4-mapped IPv6
// address, as the cookie's MAC message writes it.
func serviceKey(a netip.AddrPort) synguardSvcKey {
	k := synguardSvcKey{Family: 6, Addr: a.Addr().As16()}
	if a.Addr().Is4() {
		k.Family = 4
	}
	// The port is in network byte order in the packet; the map compares
	// bytes.
	k.Port = uint16(a.Port()>>8) | uint16(a.Port()&0xff)<<8
	return k
}

// Renew hands the program the keys and a new deadline: it answers and
// drops until the clock passes deadline, then passes everything.
func (p *Program) Renew(keys cookies.EpochKeys, deadline time.Time) error {
	return p.renew(keys, time.Now(), deadline)
}

// renew is Renew at the instant now: the program's TAI clock is taken to
// read now at the moment of the call.
func (p *Program) renew(keys cookies.EpochKeys, now, deadline time.Time) error {
	tai, err := clockNow(unix.CLOCK_TAI)
	if err != nil {
		return fmt.Errorf("xdp: read the TAI clock: %w", err)
	}
	// Instants on the program's clock: TAI, which it reads without a
	// system call, with now where the caller says.
	onTAI := func(t time.Time) uint64 { return uint64(tai + int64(t.Sub(now))) }
	// Epoch e starts at Unix time e × period (cookies: epoch = time / period).
	start := func(e int64) time.Time { return time.Unix(0, e*int64(keys.Period)) }
	c := synguardEngineControl{
		DeadlineTai: onTAI(deadline),
		EpochBase:   keys.First,
		BoundsTai:   [3]uint64{onTAI(start(keys.First + 1)), onTAI(start(keys.First + 2)), onTAI(start(keys.First + 3))},
		Keys:        keys.Keys,
	}
	p.tick.mu.Lock()
	defer p.tick.mu.Unlock()
	if err := p.tick.putControl(p.objs.Control, c); err != nil {
		return fmt.Errorf("xdp: renew: %w", err)
	}
	return nil
}

// counter indexes, as synguard.c numbers them.
const (
	cSYNReceived = iota
	cSYNACKSent
	cAmplificationGuard
	cACKInvalid
	cACKValid
	cSYNDenied
	cEarlyData
	cSYNReplayed
	cCompleted
	cDeferred
	cTranslated
	cSACKDropped
)

// Counters returns service i's counts: one lookup of its entry, summed
// over CPUs.
func (p *Program) Counters(i int) (Counters, error) {
	p.tick.mu.Lock()
	defer p.tick.mu.Unlock()
	if err := p.tick.lookupCounters(p.objs.Counters, i); err != nil {
		return Counters{}, fmt.Errorf("xdp: read counters: %w", err)
	}
	var v [len(synguardSvcCounters{}.N)]uint64
	for _, c := range p.tick.counters {
		for j, n := range c.N {
			v[j] += n
		}
	}
	return Counters{
		SYNReceived:        v[cSYNReceived],
		SYNACKSent:         v[cSYNACKSent],
		AmplificationGuard: v[cAmplificationGuard],
		ACKInvalid:         v[cACKInvalid],
		ACKValid:           v[cACKValid],
		SYNDenied:          v[cSYNDenied],
		EarlyData:          v[cEarlyData],
		SYNReplayed:        v[cSYNReplayed],
		Completed:          v[cCompleted],
		Deferred:           v[cDeferred],
		Translated:         v[cTranslated],
		SACKDropped:        v[cSACKDropped],
	}, nil
}

// Actions returns the program's verdict counts, summed over CPUs.
func (p *Program) Actions() (Actions, error) {
	var per []synguardActionCounts
	if err := p.objs.Actions.Lookup(uint32(0), &per); err != nil {
		return Actions{}, fmt.Errorf("xdp: read counters: %w", err)
	}
	var a Actions
	for _, c := range per {
		a.Pass += c.N[0]
		a.Drop += c.N[1]
		a.TX += c.N[2]
		a.Forward += c.N[3]
	}
	return a, nil
}

// driver returns the kernel driver of link name ("veth", "virtio_net",
// ...), or "" when it cannot be read.
func driver(name string) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
	if err != nil {
		return ""
	}
	return unix.ByteSliceToString(info.Driver[:])
}

// DefaultInterfaces are the links clients can arrive on when
// --xdp-interfaces is not given: every link that is up, is not loopback,
// and has an Ethernet address (XDP_TX answers in Ethernet frames).
func DefaultInterfaces() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("xdp: list interfaces: %w", err)
	}
	var names []string
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 || len(i.HardwareAddr) != 6 {
			continue
		}
		names = append(names, i.Name)
	}
	return names, nil
}

// ParseInterfaces reads --xdp-interfaces: a comma-separated list of link
// names.
func ParseInterfaces(s string) ([]string, error) {
	var names []string
	for n := range strings.SplitSeq(s, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			return nil, fmt.Errorf("--xdp-interfaces %q: an empty interface name", s)
		}
		names = append(names, n)
	}
	return names, nil
}

// RemoveService forgets the service at addr: its packets pass.
func (p *Program) RemoveService(addr netip.AddrPort) error {
	k := serviceKey(addr)
	if err := p.objs.Services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("xdp: remove service %s: %w", addr, err)
	}
	return nil
}

// synguard.c's SVC_LISTS, SVC_EARLY and SVC_REPLAY flags.
const (
	svcLists  = 1
	svcEarly  = 2
	svcReplay = 4
)

// SetSourceLists replaces service index i's allow and deny lists. A SYN
// from a denied source is dropped and counted; one from an allowed
// source passes to the engine, which lets it through. Deny wins.
func (p *Program) SetSourceLists(i int, allow, deny []netip.Prefix) error {
	if i < 0 || i >= MaxServices {
		return fmt.Errorf("xdp: service index %d: the program holds %d services", i, MaxServices)
	}
	for _, l := range []struct {
		m    *ebpf.Map
		name string
		want []netip.Prefix
	}{{p.objs.AllowList, "allow", allow}, {p.objs.DenyList, "deny", deny}} {
		want := make(map[synguardSrcKey]bool, len(l.want))
		for _, pfx := range l.want {
			want[srcKey(i, pfx)] = true
		}
		// What the map holds for service i now, less what stays.
		var k synguardSrcKey
		var v uint8
		var stale []synguardSrcKey
		it := l.m.Iterate()
		for it.Next(&k, &v) {
			if int(k.Svc) == i && !want[k] {
				stale = append(stale, k)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("xdp: read the %s list: %w", l.name, err)
		}
		for _, k := range stale {
			if err := l.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("xdp: %s list: %w", l.name, err)
			}
		}
		for k := range want {
			if err := l.m.Put(&k, uint8(1)); err != nil {
				return fmt.Errorf("xdp: %s list: add %s: %w", l.name, netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen)-32), err)
			}
		}
	}
	return nil
}

// srcKey is the list key of prefix pfx for service index i: IPv4 in the
// first four bytes.
func srcKey(i int, pfx netip.Prefix) synguardSrcKey {
	pfx = pfx.Masked()
	k := synguardSrcKey{Prefixlen: uint32(32 + pfx.Bits()), Svc: uint32(i)}
	a := pfx.Addr().Unmap()
	if a.Is4() {
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Addr = a.As16()
	}
	return k
}
