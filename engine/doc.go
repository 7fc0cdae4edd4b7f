// Package engine is synguard's handshake state machine.
//
// The engine sees the TCP segments netfilter queues for protected services
// and decides each one's fate. In cookie mode it:
//
//  1. answers a client's SYN with a SYN-ACK whose ISN is a SYN cookie and
//     whose window is zero, and drops the SYN: nothing is stored;
//  2. validates the client's ACK (ack-1 must be a cookie for this flow and
//     seq-1, or seq for a zero-window probe), then replays the client's SYN
//     to the backend with the options the cookie carries, remembering the
//     flow in a bounded pending table;
//  3. matches the backend's SYN-ACK, creates the kernel conntrack entry with
//     a sequence adjustment (so the kernel translates between the cookie ISN
//     and the backend's ISN), ACKs the backend and sends the client a window
//     update. From then on the kernel forwards the flow by itself.
//
// A backend RST, or silence after retries with backoff, becomes an RST to
// the client. Invalid ACKs are dropped without reply, so spoofed sources get
// nothing reflected.
//
// # IPv6 extension headers
//
// The queue gets what ip6tables' tcp match finds TCP in, and that match
// walks the same headers [packet.Parse] does: hop-by-hop, routing,
// destination options, AH and fragment. Conntrack reassembles fragments
// before the raw table, so a fragmented SYN arrives whole and is answered
// like any other. A SYN behind any other header (Mobility, ESP, an unknown
// one) is not TCP to netfilter: it is never queued, and the backend's IPv6
// stack discards it as an unknown protocol before TCP sees it. Whatever
// reaches the engine and does not parse anyway (a real fragment, a chain of
// more than eight headers) is dropped and counted as Malformed under no
// service: it cannot be answered, and passing a SYN the engine cannot read
// would let it reach the backend unprotected. The e2e test
// TestIPv6ExtensionHeaders checks the kernel's half of this rule.
//
// # Where each stage lives
//
// The engine does no I/O of its own and imports only packet, cookies, nf,
// handoff and the standard library. Each step of the handshake has one
// file:
//
//   - worker.go: the pipeline's entry. [Worker.Handle] parses a queued
//     packet and hands it to the client's or the backend's side; what the
//     engine sends waits in the worker's [Batch] until [Worker.Flush].
//   - client.go: the client's SYN (let through, or answered with a
//     cookie), its ACK (the cookie checked, the SYN replayed) and its RST.
//   - backend.go: the backend's SYN-ACK or RST to a replayed SYN.
//   - handoff.go: the conntrack entry, through [Kernel], then the ACK to
//     the backend and the client's window update.
//   - timers.go: retries to silent backends, expiry of old flows, and the
//     control loop that switches services in auto mode.
//   - negotiate.go: which TCP options each side is told.
//
// Everything the engine sends goes through a [Batch]: each worker's (and
// its hand-offs' one, [Worker.InlineHandOffs]), and those
// [Config.NewBatch] makes for the hand-off goroutines and the timer loop.
// What an operator should hear of leaves through [Events]. That keeps the
// engine testable in memory and lets each queue have its own [Worker]
// with its own scratch space and counters. docs/architecture.md
// describes the whole packet path.
package engine
