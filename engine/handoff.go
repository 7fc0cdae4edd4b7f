package engine

import (
	"context"
	"errors"
	"net/netip"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/packet"
)

// This file is the hand-off: once a backend has answered, the flow's
// kernel conntrack entry is made, the backend ACKed and the client's
// window opened. From then on the kernel forwards the flow by itself.

// Kernel is the kernel's connection-tracking table, as the hand-off uses
// it. Its calls may block on netlink I/O, so the engine makes them only
// from its hand-off goroutines.
type Kernel interface {
	// Create makes the entry for a handed-off flow; an entry that already
	// exists yields an error matching handoff.ErrExists.
	Create(handoff.Flow) error
	// Delete removes the entry of the flow client -> server; a missing one
	// yields an error matching handoff.ErrNotFound.
	Delete(client, server netip.AddrPort) error
}

// Hand-off goroutines and their backlog: creates are one netlink round
// trip each, so two keep up with a flood's valid ACKs while a third
// would only contend for the socket.
const (
	handoffWorkers = 2
	handoffBacklog = 4096
)

// runHandoffs completes handshakes whose backend answered, until ctx is
// done.
func (e *Engine) runHandoffs(ctx context.Context, out *outbox) {
	for {
		select {
		case <-ctx.Done():
			return
		case k := <-e.handoffs:
			e.handoff(out, k)
			out.flush()
		}
	}
}

// handoff creates the conntrack entry, then opens the client's window.
// The backend was ACKed, and the client's early data passed on, when its
// SYN-ACK came (backendSYNACK); this is off the request's path. The window
// update must follow the entry: the client's next segments should find
// it, rather than cross the queue to be translated.
func (e *Engine) handoff(out *outbox, k flowKey) {
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil || f.state != stateHandingOff {
		e.mu.Unlock()
		return
	}
	fl := *f
	e.mu.Unlock()

	taken := e.cfg.Now()
	replaced, err := e.createEntry(handoff.Flow{
		Client: k.client, Server: k.server,
		CookieISN:         uint32(fl.cookie),
		ServerISN:         fl.serverISN,
		ClientWindowScale: fl.clientScale(),
		ServerWindowScale: fl.serverScale,
		Mark:              e.cfg.HandoffMark,
		Timeout:           e.cfg.ConntrackTimeout,
	})
	if replaced {
		out.c.add(fl.svc, EntryReplaced)
	}
	if err != nil {
		out.c.add(fl.svc, HandoffFailed)
		e.events.HandoffFailed(k.server, err)
		e.mu.Lock()
		if f := e.pending.get(k); f != nil {
			fl.held = takeHeld(f)
			e.pending.remove(k)
		}
		e.mu.Unlock()
		e.dropHeld(out.c, &fl)
		resetBoth(out, k, &fl)
		return
	}

	// From now on the entry carries the flow, and what met conntrack
	// before it is translated by the workers.
	created := e.cfg.Now()
	var held heldRefs
	ack := false
	e.mu.Lock()
	if f := e.pending.get(k); f != nil {
		f.state = stateDone
		f.expires = created.Add(e.cfg.Linger)
		if !f.acked {
			// A reused flow: its backend is ACKed now that the old
			// entry is gone.
			f.acked, ack = true, true
			held = takeHeld(f)
		}
	}
	e.mu.Unlock()
	if ack {
		e.ackBackend(out, k, &fl, held)
	}
	update := packet.Segment{
		Src: k.server, Dst: k.client,
		Seq: uint32(fl.cookie) + 1, Ack: fl.clientISN + 1,
		Flags:  packet.ACK,
		Window: fl.clientWindowUpdate(),
	}
	out.send(fl.svc, &update, noCount)
	out.c.add(fl.svc, HandedOff)
	e.events.HandedOff(fl.svc, HandoffTiming{
		Backend: fl.answered.Sub(fl.validated), Wait: taken.Sub(fl.answered), Entry: created.Sub(taken),
	})
}

// createEntry makes the flow's conntrack entry. An entry the kernel still
// holds for the same ports belongs to an earlier flow in TIME_WAIT, and
// its sequence adjustment to that flow: it is replaced. An entry that
// exists after a retried create is the hand-off's own, and no error.
func (e *Engine) createEntry(h handoff.Flow) (replaced bool, err error) {
	err = e.cfg.Kernel.Create(h)
	if errors.Is(err, handoff.ErrExists) {
		if err = e.cfg.Kernel.Delete(h.Client, h.Server); err == nil || errors.Is(err, handoff.ErrNotFound) {
			err = e.cfg.Kernel.Create(h)
		}
		replaced = err == nil
	}
	if errors.Is(err, handoff.ErrExists) {
		err = nil
	}
	return replaced, err
}

// clientWindowUpdate is the window the client is told once the flow is
// handed off: the backend's SYN-ACK window, which is never scaled,
// expressed in the scale the client was told.
func (f *pendingFlow) clientWindowUpdate() uint16 {
	window := uint32(f.serverWindow)
	if f.announced.WindowScale != cookies.NoWindowScale && f.serverScale != cookies.NoWindowScale {
		window >>= uint(f.announced.WindowScale)
		if window == 0 && f.serverWindow != 0 {
			window = 1
		}
	}
	return uint16(window)
}

// backendACK completes the backend's handshake for the client.
func (f *pendingFlow) backendACK(k flowKey) packet.Segment {
	return packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Ack: f.serverISN + 1, Flags: packet.ACK, Window: f.clientWindow}
}

// resetBoth aborts a flow on both sides.
func resetBoth(out *outbox, k flowKey, f *pendingFlow) {
	toClient := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(f.cookie) + 1, Ack: f.clientISN + 1, Flags: packet.RST | packet.ACK}
	out.send(f.svc, &toClient, noCount)
	toServer := packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Flags: packet.RST}
	out.send(f.svc, &toServer, noCount)
}
