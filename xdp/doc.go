// Package xdp is synguard's fast path ahead of the kernel's stack: a BPF
// program that answers SYNs to services in cookie mode with a SYN-ACK
// written over the SYN, and drops ACKs toward a service that belong to no
// connection and carry no valid cookie. It comes as an XDP program, which
// in native mode sees a packet before the kernel allocates anything for
// it, and as the same code at tc ingress (attached through tcx), for
// links where native XDP is not to be had: veth, and drivers without it.
// There it sees the kernel's skb as it is, where generic XDP would copy
// every cloned or multi-segment one.
//
// The programs (synguard.c, built with bpf2go; the object is committed)
// are a shortcut, not a second implementation: their SYN-ACK is byte for
// byte the one the engine builds (the same SipHash cookie, layout and option
// tables, window 0, only the options the client offered, never larger
// than the SYN), and whatever they do not handle they pass to the kernel,
// where the NFQUEUE path does everything: VLAN tags, IPv4 options, IPv6
// extension headers, fragments, services in passthrough, valid cookie
// ACKs (which complete their hand-off there), established flows.
//
// The engine stays in control through maps: each service's mode and the
// options its backend announces, the cookie keys of three consecutive
// epochs with their start times (the program finds the epoch on the TAI
// clock, so a rotation needs no update in time), and a freshness deadline
// the gateway renews from the engine's control loop. Past the deadline the program
// passes everything, and the NFQUEUE path with its --fail semantics takes
// over.
//
// Programs are attached through BPF links, owned by the process: when
// synguard stops, however it stops (SIGTERM, a crash, kill -9), the kernel
// detaches them with its last file descriptor, and nothing is left for a
// restart to clean up.
//
// docs/architecture.md, "XDP fast path", has the design.
package xdp
