// Package cookies makes and checks the SYN cookies synguard answers SYNs with
// in cookie mode, and owns the keys behind them: derivation, rotation and the
// optional key file a fleet of gateways shares.
//
// A cookie is the ISN of the gateway's SYN-ACK. It lets the gateway keep no
// state for a SYN: everything it needs when the client's ACK comes back (was
// this SYN answered by us, recently, and with which options) is in the 32
// bits the ACK returns as ack-1, authenticated by a MAC over the flow.
//
// # Cookie layout
//
//	 31                                       8  7  6     4 3     1  0
//	+------------------------------------------+---+-------+-------+---+
//	|          MAC (24 bits, SipHash-2-4)      | P |  MSS  |  WS   | S |
//	+------------------------------------------+---+-------+-------+---+
//
//	MAC  low 24 bits of SipHash-2-4, keyed with the epoch key, over the
//	     message below
//	P    parity of the key epoch the cookie was made in (selects the key)
//	MSS  index into the MSS table of the client's address family
//	WS   index into the window-scale table (0 = option absent)
//	S    SACK permitted
//
// The MAC covers this 43-byte message, built on the stack:
//
//	offset  size  field
//	     0     1  client address family (4, 6, or 0 for an invalid address)
//	     1     1  server address family
//	     2    16  client address (IPv4 in v4-mapped form)
//	    18    16  server address (likewise)
//	    34     2  client port, big endian
//	    36     2  server port, big endian
//	    38     4  client ISN, big endian
//	    42     1  cookie bits 7..0 (parity and options)
//
// The family bytes matter: 192.0.2.1 and ::ffff:192.0.2.1 have the same 16
// bytes but are different flows with different MSS tables. The epoch is not
// in the message because it is already in the key. Options and parity are,
// so flipping any of the low bits invalidates the MAC like any other change.
//
// A random ACK is accepted with probability 2^-24, about one in 16.8 million
// (Linux's own syncookies manage about 2^-22 in practice). A forger with no
// key gains nothing by skill: each guess is one blind try at one flow.
//
// # Option tables
//
// MSS and window scale are rounded down to the nearest table entry, which is
// always safe: the backend then uses segments no larger than the path takes
// and assumes a client window no larger than the client offered. Rounding
// only costs throughput, so the tables put exact entries where real clients
// are and keep the gaps small elsewhere. Linux's own cookie tables (v4: 536,
// 1300, 1440, 1460; v6: 1220, 1420, 1440, 8940) are subsets of these.
//
// IPv4 MSS (MTU - 40):
//
//	 536  RFC 9293 default; also what an absent MSS option means
//	1200  tunnels stacked on tunnels, conservative clamps; keeps paths
//	      between 1200 and 1300 from falling to 536
//	1300  common clamp on VPN and mobile paths (in Linux's table)
//	1380  MTU 1420: WireGuard; also the default clamp of common firewalls
//	1440  in Linux's table; IPsec and GRE paths round here within 3%
//	1452  MTU 1492: PPPoE, very common on DSL/fibre
//	1460  MTU 1500: Ethernet, most clients
//	8960  MTU 9000: jumbo frames inside data centres
//
// IPv6 MSS (MTU - 60):
//
//	1220  MTU 1280, the IPv6 minimum; also what an absent option means
//	1280  halves the gap to 1360, so no path loses more than 5%
//	1360  MTU 1420: WireGuard
//	1400  MTU 1460: IPv6 inside IPv6 or GRE tunnels
//	1420  MTU 1480: 6in4 tunnels (tunnel brokers)
//	1432  MTU 1492: PPPoE
//	1440  MTU 1500: Ethernet
//	8940  MTU 9000: jumbo frames
//
// Window scale (index: shift):
//
//	0: absent  distinct from shift 0, because an absent option turns window
//	           scaling off in both directions while shift 0 keeps it on
//	1: 0       the smallest present shift; 1 and 2 round here
//	2: 3       4 and 5 round here
//	3: 6       macOS, iOS, FreeBSD
//	4: 7       Linux with its default buffers, Android
//	5: 8       Windows; Linux with larger default buffers
//	6: 9       Linux with 16 MiB buffers
//	7: 12      Linux tuned for long fat networks (128 MiB); 10, 11, 13 and 14
//	           round here
//
// The shifts real clients send are exact, and across 0..14 no shift is
// rounded down by more than two, so the backend never underestimates a
// client's window by more than a factor of four. A shift above 14 is treated
// as 14, as RFC 7323 says to. The SYN-ACK carries no timestamp option (the
// kernel cannot translate timestamps for a flow it did not proxy), so none
// is encoded.
//
// # Keys and rotation
//
// A Jar holds a 32-byte master secret: random per process, or read from a
// key file shared by a fleet (see LoadKeyFile and WriteKeyFile). Time is cut
// into epochs, epoch = Unix time / period (60 s by default), and each epoch
// has its own SipHash key, the first 16 bytes of
// HMAC-SHA256(master, label || period || epoch). Gateways with the same key
// file and period therefore derive the same keys with no coordination.
//
// A cookie made in epoch e carries e's parity. Validation in epoch v uses the
// key of v if the parity matches and of v-1 otherwise, so the cookie is
// accepted in epochs e and e+1 and by nothing later (in e+2 its parity picks
// e+2's key). Its lifetime is therefore between one and two periods: a cookie
// made just before a rotation still has a full period to come back.
//
// The derived keys of the current and previous epoch are cached in an
// immutable set behind an atomic pointer, rebuilt by the first call that sees
// a new epoch. Generate and Validate take no lock and allocate nothing.
//
// # Clock skew between gateways
//
// With a shared key file, the gateway that validates may not be the one that
// generated. If its clock runs ahead by s, cookies simply expire s earlier,
// so their guaranteed lifetime is one period minus s. If it runs behind by s,
// a cookie made during the first s of an epoch reaches a gateway still in the
// previous epoch and is rejected until that gateway's clock crosses the
// rotation, at most s later; the client's retransmissions carry the same
// cookie and then pass. So skew costs a fraction of about s/period of the
// cookies made near a rotation a delay of at most s, and breaks nothing
// while s stays well below the period. NTP keeps s in milliseconds against a
// 60 s period; gateways more than a few seconds apart should not share a key.
package cookies
