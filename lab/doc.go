// Package lab builds the client / gateway / backend network-namespace
// topology synguard is demonstrated, tested and benchmarked in, and the real
// peers that run in it: an HTTP backend and a legitimate-client prober.
//
// # Topology
//
// [Up] makes three namespaces named after [Config.Name] and joined by two
// veth pairs. Every lab uses the same address plan, since each lives in its
// own namespaces:
//
//	NAME-client                 NAME-gateway                  NAME-backend
//	eth0 ─────────────── to-client      to-backend ─────────────── eth0
//	198.51.100.2/24      198.51.100.1/24  203.0.113.1/24       203.0.113.2/24
//	2001:db8:c::2/64     2001:db8:c::1/64 2001:db8:b::1/64     2001:db8:b::2/64
//
// Interfaces are created directly in their namespaces (`ip link add … netns`),
// so their short fixed names never meet the host's. The client and the
// backend route everything through the gateway and do not forward. The
// gateway forwards (IPv4 and IPv6), has reverse-path filtering off so that
// spoofed sources reach it, and routes the spoof ranges [SpoofPrefix4] and
// [SpoofPrefix6] back to the client: a backend's SYN-ACKs to a flood's
// spoofed sources are really transmitted, then dropped by the client
// namespace in its mangle PREROUTING, before routing. A real flood's replies
// leave for the internet; a namespace that routed each one, failed and
// rate-limited an ICMP error would spend, on the lab's shared CPUs, more
// than some gateways spend answering, and benchmarks would count it. IPv6 duplicate address detection is off so addresses work at
// once. Offloads are left as the kernel sets them on veth.
//
// # Client RTT
//
// The lab's links have microsecond round trips, and this kernel has no
// netem to add more. [Config.ClientRTT] puts a remote client that far
// away: a namespace NAME-remote (192.0.2.2/24, 2001:db8:d::2/64) behind a
// [Relay] in NAME-relay, which forwards the Ethernet frames between it and
// the client namespace (192.0.2.1/24, 2001:db8:d::1/64) half the round
// trip after each arrived, both ways, in order, with bounded memory. The
// client namespace then forwards between the remote client and the
// gateway, which routes the remote prefixes to it, so the remote client's
// traffic enters the gateway on the same link as the flood's. Floods
// still leave from the client namespace straight to the gateway, and the
// replies to their spoofed sources end there (a blackhole route), so they
// never cross the relay. [Topology.LegitClient] is where legitimate
// clients connect from, and [Ping] measures the round trip (ICMP echo).
// The relay runs in the process that built the lab, so such a lab lives
// as long as it.
//
// [Topology.Down] kills what still runs in the namespaces and deletes them;
// [DownAll] does the same for every namespace whose name has a given prefix,
// for cleaning up after a crash.
//
// # High availability
//
// [HAUp] builds a second kind of lab, for an active/standby gateway pair
// (docs/ha.md): a client and a backend, each on a switch (a bridge in a
// namespace of its own), and two gateways, gw-a and gw-b, on both switches
// and on a third, the sync link. Each gateway runs conntrackd, synguard
// (one key file for both) and keepalived with the docs/ha files, changed
// only by [HAReplacer] (their paths move into the lab's directory). Names
// derive from [HAConfig.Name], so labs run side by side. [HA.Kill] makes a
// gateway a dead box (its processes SIGKILLed, its namespace and links
// gone) and [HA.Boot] brings it back as a box just switched on. [HADemo]
// is `synguard lab ha demo`: a [PacedDownload] and short connections
// ([RunConns]) across the master's death. Daemons run in sessions of
// their own, so a lab outlives `synguard lab ha up`; [HADown] removes
// processes, namespaces and files.
//
// # Peers
//
// [ServeHTTP] is the backend: GET /bytes/N answers N bytes of deterministic
// content ([NewContentReader], checksum [ContentSHA256]) and GET /healthz
// answers "ok". [ServeBackend] runs it in-process with the listening socket
// inside a namespace and counts accepted connections; [ServeBackendBacklog]
// and [Listen] set a listen backlog, for backends whose accept queue
// overflows. [Probe] times one legitimate connection (handshake, then a
// small verified download: its first byte and its end) and [Download]
// fetches and checksums a large body. [ServeGreeting] is a backend whose
// server speaks first, as SMTP's does, and [ProbeGreeting] its client,
// which sends nothing and times the greeting. Sockets are created inside the
// namespace with [netns.NS.Do]; a client's connect, and its wait in the
// network poller, then run from ordinary goroutines, on no thread of
// their own. All of these accept a nil namespace, meaning the caller's
// own.
//
// # Observing
//
// [TCPExt] reads a namespace's TcpExt counters (such as a backend's
// TSEcrRejected, the ACKs it dropped for a timestamp echo it never
// sent). [ReadLinkCounters] reads an interface's packet counters and [OpenCapture]
// receives copies of the packets crossing one (AF_PACKET), for tests and
// scenarios that check what was on the wire.
package lab
