package engine

import "github.com/synguard/synguard/cookies"

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
