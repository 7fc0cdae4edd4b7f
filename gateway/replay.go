package gateway

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// The fast path's handshake completion (docs/architecture.md, "Handshakes
// completed at tc"): where the client side runs at tc ingress, a pure
// cookie ACK becomes the replayed SYN there, sent out of the link the
// service is routed through, and a second tc program on that link
// completes the backend's handshake. replayLink finds and prepares that
// link for a service.

// replayLink returns the interface index the tc programs send service
// addr's SYNs out of, attaching the service side's program to that link
// the first time; 0 when the service's handshakes stay with the queue.
func (f *fastPath) replayLink(addr netip.Addr) int {
	if !f.replay {
		return 0
	}
	if i, ok := f.links[addr]; ok {
		return i
	}
	i, err := f.prepareReplayLink(addr)
	if err != nil {
		f.log.Warn().Err(err).Str(telemetry.FieldEvent, telemetry.EventXDPUnavailable).
			Stringer("service", addr).Msg("handshakes to this service complete through the queue")
	}
	f.links[addr] = i
	return i
}

func (f *fastPath) prepareReplayLink(addr netip.Addr) (int, error) {
	ifindex, err := routeLink(addr)
	if err != nil {
		return 0, err
	}
	iface, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("link toward %s: %w", addr, err)
	}
	if iface.Flags&net.FlagLoopback != 0 {
		return 0, fmt.Errorf("%s is this host's own", addr)
	}
	if err := f.prog.AttachServiceSide(iface.Name, ifindex); err != nil {
		return 0, err
	}
	return ifindex, nil
}

// routeLink asks the kernel's routing table which link reaches addr.
func routeLink(addr netip.Addr) (int, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return 0, fmt.Errorf("route to %s: %w", addr, err)
	}
	defer c.Close()
	family, bits := uint8(unix.AF_INET), 32
	if addr.Is6() && !addr.Is4In6() {
		family, bits = unix.AF_INET6, 128
	}
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.RTA_DST, addr.Unmap().AsSlice())
	attrs, err := ae.Encode()
	if err != nil {
		return 0, err
	}
	rtm := make([]byte, unix.SizeofRtMsg)
	rtm[0], rtm[1] = family, uint8(bits)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETROUTE, Flags: netlink.Request},
		Data:   append(rtm, attrs...),
	})
	if err != nil {
		return 0, fmt.Errorf("route to %s: %w", addr, err)
	}
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofRtMsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofRtMsg:])
		if err != nil {
			continue
		}
		for ad.Next() {
			if ad.Type() == unix.RTA_OIF && len(ad.Bytes()) == 4 {
				return int(binary.NativeEndian.Uint32(ad.Bytes())), nil
			}
		}
	}
	return 0, fmt.Errorf("route to %s: no outgoing link", addr)
}

// replayer lets the engine forget the fast path's record of a flow.
type replayer struct{ prog *xdp.Program }

func (r replayer) Forget(client, server netip.AddrPort, cookie cookies.Cookie) (engine.FastEndings, error) {
	e, _, err := r.prog.ForgetReplayed(client, server, uint32(cookie))
	return fastEndings(e), err
}

func (r replayer) Endings(client, server netip.AddrPort, cookie cookies.Cookie) engine.FastEndings {
	e, found := r.prog.ReplayedEndings(client, server, uint32(cookie))
	fe := fastEndings(e)
	fe.Gone = !found
	return fe
}

func (r replayer) ForgetEnded(client, server netip.AddrPort, cookie cookies.Cookie) {
	// A failure leaves the record to the LRU map; the flow is over.
	_ = r.prog.ForgetEnded(client, server, uint32(cookie))
}

func fastEndings(e xdp.Endings) engine.FastEndings {
	return engine.FastEndings{ClientFIN: e.ClientFIN, ServerFIN: e.ServerFIN, RST: e.RST, Replaced: e.Replaced}
}

func (r replayer) Pending(client, server netip.AddrPort) (engine.ReplayedFlow, bool) {
	ev, ok := r.prog.ReplayedPending(client, server)
	return replayedFlow(ev), ok
}

// runHandshakes hands the tc programs' events to the engine as they come,
// until ctx is done: the engine makes a completed flow's entry at once,
// and sets its timers once the ring is read to the end.
// A failure is logged; the flows it leaves without an entry are
// translated by the programs until their records are forgotten.
func (f *fastPath) runHandshakes(ctx context.Context, eng *engine.Engine) error {
	r, err := f.prog.Handshakes()
	if err != nil {
		return f.ringLost(ctx, err, "XDP handshake events unavailable")
	}
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	for {
		s, err := r.Read()
		if err != nil {
			if ctx.Err() != nil {
				return nil // the ring was closed for the stop
			}
			return f.ringLost(ctx, err, "XDP handshake events stopped")
		}
		if ev, ok := s.ReplayEvent(); ok {
			eng.FastPathReplayed(replayedFlow(ev))
		}
		if r.Fill() == 0 {
			eng.FastPathCaughtUp()
		}
	}
}

// replayedFlow is the engine's view of an event of the fast path's.
func replayedFlow(ev xdp.ReplayEvent) engine.ReplayedFlow {
	return engine.ReplayedFlow{
		Service: ev.Service, Client: ev.Client, Server: ev.Server,
		Cookie: cookies.Cookie(ev.Cookie), ClientISN: ev.ClientISN, ClientWindow: ev.ClientWindow,
		Answered: ev.Answered, ServerISN: ev.ServerISN, ServerScale: ev.ServerScale,
	}
}
