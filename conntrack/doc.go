// Package conntrack hands flows whose handshake synguard completed with SYN
// cookies over to the kernel's connection tracking, so the kernel forwards
// the rest of them itself.
//
// # The hand-off
//
// In cookie mode the client's handshake ends at the gateway (its SYN-ACK
// carried the cookie as ISN) and the backend's at a replayed SYN from the
// engine (its SYN-ACK carried the backend's own ISN). The engine's handshake
// packets are untracked, so the kernel knows nothing of the flow. Table.Create
// then writes the entry a tracked, completed handshake would have left, plus
// the one thing no real handshake produces: a sequence adjustment that maps
// the backend's sequence space onto the cookie's. From then on the kernel
// accepts the flow as ESTABLISHED, translates seq and ack (and SACK blocks)
// in every segment, and the firewall passes it by its connmark without
// queueing it to the engine.
//
// The engine must create the entry; it cannot let the kernel create one and
// amend it. The kernel attaches the sequence-adjustment extension only when
// ctnetlink creates an entry (ctnetlink_create_conntrack); an adjustment sent
// as an update of an existing entry is silently ignored. That is also why the
// handshake packets must stay untracked: a kernel-made entry would be in the
// way (Create would fail with handoff.ErrExists) and could not carry the adjustment.
//
// Order matters: the engine sends the client its window update only after
// Create returned, or the client's first data arrives before the entry,
// is INVALID, and waits for a retransmission.
//
// # The entry
//
//   - Status SEEN_REPLY|ASSURED|CONFIRMED. ASSURED keeps the entry from early
//     eviction when the table is full; the kernel refuses the create with
//     EBUSY without CONFIRMED. It adds SEQ_ADJUST itself when an adjustment
//     is given.
//   - TCP protoinfo: state ESTABLISHED; per direction the tracking flags
//     BE_LIBERAL (conntrack saw no handshake, so its window bookkeeping starts
//     from a guess and must not mark segments INVALID), SACK_PERM (conntrack
//     reads SACK blocks when present) and WINDOW_SCALE with the client's shift
//     for the original direction and the backend's for the reply direction.
//     Scaling is in effect only when both sides announced it, and the kernel
//     applies the shifts only when both directions carry WINDOW_SCALE, so the
//     flag is set in both or neither. On the wire each direction's flags are
//     the kernel's {flags, mask} byte pair, which ti-mo/conntrack takes as one
//     big-endian uint16, flags<<8 | mask.
//   - Reply-direction sequence adjustment: before = after = CookieISN −
//     ServerISN (mod 2^32), at position ServerISN+1. The kernel adds it to the
//     seq of backend-to-client segments and subtracts it from the ack of
//     client-to-backend ones. Position only chooses between before and after,
//     which are equal; it must merely be non-zero, because ti-mo/conntrack
//     sends an adjustment only when all three fields are non-zero (so 1 is
//     used when ServerISN+1 wraps to 0). With a zero delta nothing is sent.
//   - The connmark handoff.Flow.Mark, which must be non-zero: it is how the
//     firewall tells handed-off flows from others.
//   - A timeout, which the kernel requires on create and replaces with its own
//     per-state timeout on the flow's next packet. A zero handoff.Flow.Timeout
//     means the namespace's nf_conntrack_tcp_timeout_established (read by
//     Open; 5 days by default): exactly what the kernel sets when it sees a
//     handshake complete. So a flow that stays silent after its handshake (an
//     idle pooled connection, a client-speaks-first protocol) lives as long
//     as it would without synguard, instead of expiring and having its later
//     packets dropped as INVALID; a short default would break those flows,
//     and entries are created only for clients that proved their address.
//
// # The socket
//
// A Table's ctnetlink socket belongs to the network namespace Open was called
// in, whichever goroutine uses it later. Conntrack state is per namespace and
// needs no setup there: entries can be created in a fresh namespace. Packets
// consult them, though, only once conntrack's hooks are active in the
// namespace, which the kernel does when the first rule that uses conntrack
// (ctstate, connmark, CT) is installed — as the firewall's rules do.
//
// Create, CreateBatch and Delete are the hand-off's hot path and are
// hand-written: each request is encoded into a buffer the Table keeps and
// sent on a plain blocking netlink socket, one write and one read, with no
// allocation (ti-mo/conntrack, which the dumps still use, takes some 130
// allocations and three system calls per create). CreateBatch sends up to
// MaxBatch creates in one write, only the last asking for an ack: the
// kernel answers the others only when they fail, and in order.
//
// Every request has a deadline (RequestTimeout for Create and Delete, the
// socket's receive timeout; DumpTimeout for dumps), so a kernel that never
// answers costs a worker seconds, not forever. An expired deadline closes
// the socket (ti-mo/conntrack does not expose its socket's deadline, so
// for dumps that is how the read is interrupted); the next request opens
// a new socket in the same namespace. A request that timed out may still
// have taken effect. The engine does not retry: it resets both ends of a
// flow whose Create failed, and an entry a timed-out Create made anyway
// lingers until its timeout. Only a Create that finds an entry
// (handoff.ErrExists) is answered with Delete and a second Create: the
// entry of an earlier flow on the same ports. Requests on a Table are
// serialised; the netlink socket would serialise them anyway, and each
// takes a few microseconds.
//
// Lookup and Marked dump the table and are meant for tests and diagnostics.
// They do not use a ctnetlink Get of the one entry: with mdlayher/netlink
// v1.11.2 it never returns on this kernel (the reply is flagged multi-part and
// ends with an ack rather than DONE). Marked has the kernel filter the dump
// by connmark (checked on Linux 6.18).
package conntrack
