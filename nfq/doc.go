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
// go-nfqueue does the configuration: it opens the netlink socket, binds
// the queue and sets the parameters above. While it exchanges those
// messages, a socket filter keeps packet messages off the socket (a packet
// arriving in the middle of that exchange would make it fail, which on a
// busy queue is every time). The kernel keeps those packets queued; the
// first packet received afterwards tells which ids they have, and they get
// the verdict NF_REPEAT in one batch, before any other verdict, so the hook
// queues them again and the handler sees them. Before that, anything
// already on the new socket is discarded: netlink port ids are reused, and
// a message still in flight to the previous owner of ours would break the
// exchange the same way.
//
// Its per-packet receive path is not used. go-nfqueue starts a goroutine
// that receives one message at a time into fresh buffers, parses it into
// an Attribute of pointers and sends each verdict on its own: 61
// allocations and three system calls per packet, 17–21 µs of CPU per SYN,
// ~50k packets/s per queue (measured in the lab described below; see
// docs/architecture.md). Once the queue is configured, Open parks that
// goroutine: a read deadline in the past fails its receive, and its error
// callback holds it until the socket is closed (the setup filter is still
// attached, so it cannot have taken a packet). From then on the socket
// belongs to this package's receive loop. TestGoNfqueueContract pins each
// go-nfqueue behaviour this hand-over relies on, so that an upgrade that
// changes one fails by name.
//
// # Receive path
//
// Run (or RunBatch) runs the loop on the calling goroutine:
//
//	recvmmsg ─▶ parse ─▶ Handle per packet ─▶ Flush ─▶ one write of all verdicts
//
// Why it is built this way:
//   - One recvmmsg takes up to 64 packet messages (the kernel sends one
//     per datagram), so a flood costs one receive system call per 64 SYNs
//     instead of two per SYN. It never blocks (MSG_DONTWAIT): when the
//     socket is empty the goroutine waits in the Go netpoller, so closing
//     the socket ends the wait, and packets that arrive between Open and
//     Run simply wait in the socket and, behind it, in the kernel queue.
//   - Each message has a buffer of its own, preallocated and large enough
//     for the largest packet message (a 64 KiB packet and its attributes),
//     so none is ever truncated; only the bytes a message fills are
//     touched. Attributes are read in place: the Packet handed to the
//     handler points into that buffer, which is why Payload is valid only
//     during Handle and the handler must not keep the *Packet.
//   - The verdicts of a batch go to the kernel in one write, as
//     NFQNL_MSG_VERDICT_BATCH messages: one per run of consecutive packets
//     with the same verdict. A batch verdict applies to every packet of the
//     queue up to its id that still waits; the kernel queues to us in id
//     order and every earlier packet already has its verdict, so that is
//     exactly the run. A SYN flood's batch is one message. (Held packets
//     change this; see below.)
//   - BatchHandler.Flush runs after the last Handle of a batch and before
//     its verdicts: the engine sends the batch's SYN-ACKs there, in one
//     sendmmsg (package rawsock).
//   - recvmmsg and the verdict write are raw system calls, unannounced to
//     the Go scheduler. Both return without waiting, but a batch can take
//     longer than sysmon's 20 µs tick, and an announced system call that
//     long has its P handed to another thread; under a flood that was most
//     calls, and sysmon's wake-ups and the hand-offs cost a third of the
//     process's CPU. rawsock's sendmmsg does the same.
//   - Nothing is allocated per packet or per batch (TestReceiverAllocatesNothing,
//     BenchmarkReceiveBatch; gateway's TestPipelineAllocatesNothing and
//     BenchmarkPipeline cover queue, engine and sends against the kernel).
//
// Measured in a lab on a 2-vCPU VM (e2e's BenchmarkGatewayFlood, `synguard
// bench`): the gateway process spends ~3–4.5 µs of CPU per SYN (it was
// 17–21; 2.2–3.2 at 100k SYN/s since SYN-ACKs leave on the ingress link,
// see package rawsock), one queue answers ~190–230k SYN/s, and 200k SYN/s
// offered to one queue were all answered with no queue drops. What
// remains is nearly all kernel work: the SYN-ACK's way out (about half:
// the packet socket's path a quarter of the process, the receiving side's
// processing, which veth runs in the sender's context, a fifth),
// recvmmsg, the verdicts, and waking up when the queue runs dry; the
// engine's own code is about a tenth.
//
// Queue length and socket buffer (DefaultMaxQueueLen, DefaultReadBuffer)
// are sized together so that a burst fills the queue, counted per packet,
// rather than the socket; their comments give the figures.
//
// # Verdicts
//
// The handler runs on the receive goroutine, one packet at a time; its
// verdicts are sent when the batch is done, before the next receive: the
// handler must not block, or the whole queue waits. Accept lets the packet
// continue through netfilter; Drop (or any value but the two below)
// discards it. AcceptRewritten accepts it with the bytes the handler
// rewrote in place in Payload: its verdict is an NFQNL_MSG_VERDICT of its
// own carrying the packet (NFQA_PAYLOAD), gathered from the receive buffer,
// which is intact until the batch's verdicts are written. The kernel
// copies those bytes over the packet's, marks its checksum unverified and
// computes none: the handler fixes the checksums it invalidates. A
// packet message with an id but no payload (impossible in packet copy
// mode, but the kernel's word is not checked) cannot be judged; it gets the
// verdict the operator chose for packets the engine cannot see, Accept when
// FailOpen is set and Drop otherwise, and is counted as Malformed. A
// message without an id has no packet to decide on and is only counted.
// Verdicts the kernel rejects come back as netlink errors and are counted
// as VerdictErrors, as are the packets of a verdict write that failed.
//
// # Holding packets
//
// Hold gives a packet no verdict: it stays in the kernel's queue, taking
// one of its MaxQueueLen places and counted in its queue_total, until
// Release gives it Accept (maybe with new bytes) or Drop. The engine holds
// a client's early data this way until the backend connection exists.
//
// A batch verdict covers every waiting packet up to its id, held ones
// included. So while packets are held, a run's batch verdict stops below
// the smallest id held, and every packet after it gets a verdict message
// of its own, still in the batch's one write; with nothing held the loop
// is back to one message per run. The loop alone adds holds and reads the
// smallest id held once per batch, so releases in between only make it
// err on the safe side.
//
// Release may run on any goroutine: a mutex guards the set of held ids
// (a preallocated array in id order, searched by halving) and the
// message buffer it writes its verdict from, in a write of its own;
// netlink takes writes from several threads. A Release can also come
// before the loop has recorded the Hold it answers: the handler may hand
// the packet to a goroutine that finishes first. The loop publishes the
// id in Handle (an atomic store before and after each call), and a
// Release of that id is kept and sent by the loop when Handle returns
// Hold, after the batch's earlier verdicts, so it is never recorded as
// held; if Handle returns another verdict, that one stands and the release
// is counted as a verdict error. Releasing an id that is not held fails
// with ErrNotHeld and sends nothing.
//
// Held packets the kernel drops on its own (their interface went down,
// the queue was unbound) stay in the set until released; the kernel then
// refuses the verdict, which the loop counts. Stats counts holds,
// releases and rewritten packets; Held is the number held now.
//
// # Fail-open and fail-closed
//
// Two different situations, two different switches:
//   - Queue full or socket buffer full (the engine is too slow): the
//     kernel drops the packet and counts it (queue_dropped, user_dropped;
//     see KernelStats), unless Config.FailOpen sets NFQA_CFG_F_FAIL_OPEN,
//     in which case it accepts the packet unseen and counts it nowhere. At
//     flood rates that lets every SYN the queue cannot take in past the
//     engine, unchallenged, to the backend: with a flood several times
//     what the queue answers, most of it. Fail-open must be a conscious,
//     documented choice.
//   - Nobody bound to the queue (the daemon is down): decided by the
//     iptables rule, not by this package. Without --queue-bypass the
//     packet is dropped; with it, it skips the NFQUEUE rule.
//
// Close (or Run returning) unbinds the queue; the kernel then drops the
// packets still waiting for a verdict, held ones included, and new
// packets meet the "nobody bound" case.
//
// # ENOBUFS
//
// When the kernel cannot append a packet message to our full socket
// buffer, it drops the packet (or accepts it, fail-open), and the next
// receive on the socket fails with ENOBUFS (a recvmmsg that already has
// messages returns them, and the next one reports it). The receive loop counts that
// (Stats.ENOBUFS, one per report, however many packets were lost; the
// kernel's user_dropped counts packets) and carries on: the socket is
// intact. ENOBUFS reporting stays enabled (no NETLINK_NO_ENOBUFS), because
// it is the only userspace signal of this loss. Other receive errors are
// counted too, logged at most once a second, and retried with a short
// backoff when they repeat; only a closed or invalid socket ends the loop,
// and then Run returns the error. Nothing stops silently.
package nfq
