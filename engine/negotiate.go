package engine

import (
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/packet"
)

// The client and the backend each negotiate their options with synguard,
// not with each other: the client with the cookie SYN-ACK, the backend
// with the replayed SYN. Window scaling and SACK are on only when both a
// SYN and its SYN-ACK carry them, so the replayed SYN offers the backend
// an option only if the SYN-ACK gave it to the client. Otherwise, once the
// announced options lack one (a backend learned not to scale, perhaps from
// a SYN-cookie SYN-ACK of its own, which carries no window scale), the
// backend would scale its windows while the client reads them unscaled.

// clientScale is the window scale the client uses on this flow: its own,
// as the cookie carried it, if the SYN-ACK announced scaling; none
// otherwise.
func (f *pendingFlow) clientScale() cookies.WindowScale {
	if f.announced.WindowScale == cookies.NoWindowScale {
		return cookies.NoWindowScale
	}
	return f.client.WindowScale
}

// sackNegotiated reports whether the client may send SACK blocks on this
// flow: it offered SACK and the SYN-ACK permitted it.
func (f *pendingFlow) sackNegotiated() bool {
	return f.client.SACKPermitted && f.announced.SACKPermitted
}

// clientOptions converts a SYN's options to what a cookie carries.
func clientOptions(o *packet.Options) cookies.Options {
	c := cookies.Options{WindowScale: cookies.NoWindowScale, SACKPermitted: o.SACKPermitted}
	if o.HasMSS {
		c.MSS = o.MSS
	}
	if o.HasWindowScale {
		c.WindowScale = cookies.WindowScale(min(o.WindowScale, packet.MaxWindowScale))
	}
	return c
}

// announce chooses the SYN-ACK options for a client: the backend's own,
// limited to what the client offered. Offering only what the client sent
// also keeps the SYN-ACK no larger than the SYN.
func announce(client *packet.Options, backend BackendOptions) BackendOptions {
	a := BackendOptions{WindowScale: cookies.NoWindowScale}
	if client.HasMSS {
		a.MSS = backend.MSS
	}
	if client.HasWindowScale {
		a.WindowScale = backend.WindowScale
	}
	a.SACKPermitted = client.SACKPermitted && backend.SACKPermitted
	return a
}

// announceFromCookie reconstructs the SYN-ACK options from the client's
// options as the cookie carries them: the ACK repeats none of the SYN's.
func announceFromCookie(c cookies.Options, backend BackendOptions) BackendOptions {
	o := packet.Options{
		MSS: c.MSS, HasMSS: true,
		SACKPermitted:  c.SACKPermitted,
		HasWindowScale: c.WindowScale != cookies.NoWindowScale,
	}
	return announce(&o, backend)
}

func (a BackendOptions) packetOptions() packet.Options {
	o := packet.Options{SACKPermitted: a.SACKPermitted}
	if a.MSS != 0 {
		o.MSS, o.HasMSS = a.MSS, true
	}
	if a.WindowScale != cookies.NoWindowScale {
		o.WindowScale, o.HasWindowScale = uint8(a.WindowScale), true
	}
	return o
}

// backendSYN is the client's SYN replayed to the backend: the client's ISN
// and its options as the cookie carried them, without timestamps.
func backendSYN(k flowKey, f *pendingFlow) packet.Segment {
	o := packet.Options{
		MSS: f.client.MSS, HasMSS: f.client.MSS != 0,
		SACKPermitted: f.sackNegotiated(),
	}
	window := uint32(f.clientWindow)
	if scale := f.clientScale(); scale != cookies.NoWindowScale {
		o.WindowScale, o.HasWindowScale = uint8(scale), true
		window <<= uint(scale)
	}
	return packet.Segment{
		Src: k.client, Dst: k.server,
		Seq:     f.clientISN,
		Flags:   packet.SYN,
		Window:  uint16(min(window, 0xffff)),
		Options: o,
	}
}

// observedBackend reads the options of a backend's SYN-ACK.
func observedBackend(o *packet.Options) BackendOptions {
	b := BackendOptions{MSS: o.MSS, WindowScale: cookies.NoWindowScale, SACKPermitted: o.SACKPermitted}
	if !o.HasMSS {
		b.MSS = 536
	}
	if o.HasWindowScale {
		b.WindowScale = cookies.WindowScale(min(o.WindowScale, packet.MaxWindowScale))
	}
	return b
}

// mismatch reports whether the backend's SYN-ACK contradicts what the
// client was told. Only options the client was told about count: a
// backend cannot scale or SACK if the client did not offer it.
func (a BackendOptions) mismatch(observed BackendOptions) bool {
	if a.MSS != 0 && a.MSS > observed.MSS {
		return true
	}
	if a.WindowScale != cookies.NoWindowScale && a.WindowScale != observed.WindowScale {
		return true
	}
	return a.SACKPermitted && !observed.SACKPermitted
}

// learnFromSYNACK folds a backend's SYN-ACK that contradicted what clients
// were told into what they are told from now on. Only options the client
// offered are observable, so the others keep their learned values.
func (e *Engine) learnFromSYNACK(svc int, observed BackendOptions) {
	cur := e.Backend(svc)
	if observed.MSS != 0 {
		cur.MSS = observed.MSS
	}
	cur.WindowScale = observed.WindowScale
	cur.SACKPermitted = observed.SACKPermitted
	e.events.BackendMismatch(e.svc(svc).addr, observed)
	e.LearnBackend(svc, cur, "syn_ack")
}
