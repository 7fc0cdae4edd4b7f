// Package bench generates the load synguard is measured under.
//
// This part is the SYN flood generator. A [Flooder] sends TCP SYNs that look
// like Linux's (MSS 1460 over IPv4 and 1440 over IPv6, as Linux announces on
// a 1500-byte MTU; SACK-permitted; timestamps; window scale 7; window 44 or
// 45 segments) from random spoofed sources, random ports (1024-65535) and
// random initial sequence numbers and timestamps, to one target. The target
// must be a loopback, private, documentation or benchmarking address
// ([LabTarget]). Sources are confined to the ranges the lab routes back and that
// can never be real hosts: [lab.SpoofPrefix4] (198.18.0.0/15, the RFC 2544
// benchmarking range) and [lab.SpoofPrefix6] (2001:db8:ff00::/40, inside the
// documentation prefix). Every flood is bounded by a packet count and a
// duration, both required and capped, and stops by itself at whichever
// comes first (or when its context ends).
//
// The send path is a raw IP socket (IPPROTO_RAW, header included) connected
// to the target, fed by sendmmsg(2) in batches from preallocated buffers and
// message headers: building and sending a packet allocates nothing. Packets
// are built with [packet.Build], synguard's one packet builder, and sources,
// ports and sequence numbers come from a PCG generator. A configured rate is
// kept by pacing whole batches to an absolute schedule (packet i is due at
// start + i/rate), so oversleeping is caught up by the following batches
// rather than lost, and batches shrink to about a millisecond of packets so
// that a paced flood is not a train of bursts.
//
// The socket belongs to the namespace the caller is in when [NewFlooder]
// runs; open it inside [netns.NS.Do] to flood from a lab's client namespace,
// then [Flooder.Run] from any goroutine.
package bench
