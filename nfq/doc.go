// Package nfq is synguard's NFQUEUE I/O: it binds netfilter queues, hands
// each queued packet to a handler and returns the handler's verdict to the
// kernel, and it reads the kernel's own queue counters. It knows nothing
// about TCP or cookies; the engine does.
//
// # Queues
//
// One Queue is one queue number with its own netlink socket and receive
// goroutine. Several queues (iptables --queue-balance a:b) are opened one by
// one and each Run in its own goroutine; they share nothing. A queue is
// opened in the network namespace of the calling thread.
//
// Open binds and configures the queue:
//   - copy mode "packet" with the whole packet copied (the kernel's maximum,
//     65531 bytes), because the engine must see complete IPv4/IPv6 header
//     chains and TCP options, and may check the TCP checksum; the queued
//     traffic (SYNs and handshake segments) is small anyway;
//   - no GSO flag, so the kernel segments GSO/GRO aggregates before
//     queueing and every packet is a real one with a valid checksum;
//   - the queue length (DefaultMaxQueueLen) and the socket receive buffer
//     (DefaultReadBuffer, set with SO_RCVBUFFORCE);
//   - the fail-open flag if asked for.
//
// While go-nfqueue exchanges the configuration messages, a socket filter
// keeps packet messages off the socket (a packet arriving in the middle of
// that exchange would make it fail, which on a busy queue is every time).
// The kernel keeps those packets queued; the first packet received
// afterwards tells which ids they have, and they get the verdict NF_REPEAT
// in one batch, so the hook queues them again and the handler sees them.
// Before that, anything already on the new socket is discarded: netlink
// port ids are reused, and a message still in flight to the previous owner
// of ours would break the exchange the same way.
//
// # Receive path
//
// Today the path is go-nfqueue's RegisterWithErrorFunc: per packet, one
// receive (with a peek for the size), a parse into an nfqueue.Attribute,
// the handler, one verdict message. It runs at ~50k packets/s per queue
// (DESIGN.md §7). A batched recvmmsg loop can replace it behind the same
// API; that is why Packet.Payload is valid only during the handler call and
// why the handler must not keep the *Packet.
//
// Packets that arrive after Open and before Run wait: in the socket buffer
// and, behind it, in the kernel queue. They are not lost unless the queue
// fills.
//
// # Verdicts
//
// The handler runs on the receive goroutine, one packet at a time, and its
// verdict is sent before the next packet is read: the handler must not
// block, or the whole queue waits. Accept lets the packet continue through
// netfilter; Drop (or any other value) discards it. A packet message with
// an id but no payload (impossible in packet copy mode, but the kernel's
// word is not checked) cannot be judged; it gets the verdict the operator
// chose for packets the engine cannot see, Accept when FailOpen is set and
// Drop otherwise, and is counted as Malformed. A message without an id has
// no packet to decide on and is only counted.
//
// # Fail-open and fail-closed
//
// Two different situations, two different switches:
//   - Queue full or socket buffer full (the engine is too slow): the
//     kernel drops the packet and counts it (queue_dropped, user_dropped;
//     see KernelStats), unless Config.FailOpen sets NFQA_CFG_F_FAIL_OPEN,
//     in which case it accepts the packet unseen and counts it nowhere. At
//     flood rates that lets a large share of the flood past the engine
//     (DESIGN.md §7), so fail-open must be a conscious, documented choice.
//   - Nobody bound to the queue (the daemon is down): decided by the
//     iptables rule, not by this package. Without --queue-bypass the
//     packet is dropped; with it, it skips the NFQUEUE rule.
//
// Close (or Run returning) unbinds the queue; the kernel then drops the
// packets still waiting for a verdict, and new packets meet the "nobody
// bound" case.
//
// # ENOBUFS
//
// When the kernel cannot append a packet message to our full socket
// buffer, it drops the packet (or accepts it, fail-open), and the next
// receive on the socket fails with ENOBUFS. The receive loop counts that
// (Stats.ENOBUFS, one per report, however many packets were lost; the
// kernel's user_dropped counts packets) and carries on: the socket is
// intact. ENOBUFS reporting stays enabled (no NETLINK_NO_ENOBUFS), because
// it is the only userspace signal of this loss. Other receive errors are
// counted too, logged at most once a second, and retried with a short
// backoff when they repeat; only a closed or invalid socket ends the loop,
// and then Run returns the error. Nothing stops silently.
package nfq
