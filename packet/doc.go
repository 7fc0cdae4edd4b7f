// Package packet parses and builds the IPv4/IPv6 + TCP segments synguard
// handles, without allocating.
//
// [Parse] decodes one pass over a byte slice into a caller-owned [Packet]:
// offsets and copies of fixed-size fields, never sub-slices that outlive the
// call. Every length the packet claims is checked against the buffer, so a
// malformed packet yields an error, never a panic or a read past its end.
// IPv6 extension headers (hop-by-hop, routing, destination options, a
// non-fragmenting fragment header, AH) are walked to the TCP header; anything
// else is reported as unsupported so the caller can apply its own policy.
//
// [Build] writes a handshake segment (SYN, SYN-ACK, ACK, RST) with its IP and
// TCP checksums into a caller-provided buffer. It emits options in the order
// Linux does, so replayed SYNs look like the client's own.
//
// The checksum helpers include an incremental update (RFC 1624) for callers
// that rewrite a field in place.
package packet
