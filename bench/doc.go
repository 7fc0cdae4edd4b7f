// Package bench measures how much SYN flood a setup survives and what it
// costs legitimate clients: synguard, the kernel's SYNPROXY and an
// unprotected backend, side by side in one run on one machine.
//
// # Generator
//
// A [Flooder] sends TCP SYNs that look like Linux's (MSS 1460 over IPv4
// and 1440 over IPv6, as Linux announces on a 1500-byte MTU;
// SACK-permitted; timestamps; window scale 7; window 44 or 45 segments)
// from random spoofed sources, random ports (1024-65535) and random
// initial sequence numbers and timestamps, to one target. The target must
// be a loopback, private, documentation or benchmarking address
// ([LabTarget]). Sources are confined to the ranges the lab routes back
// and that can never be real hosts: [lab.SpoofPrefix4] (198.18.0.0/15, the
// RFC 2544 benchmarking range) and [lab.SpoofPrefix6] (2001:db8:ff00::/40,
// inside the documentation prefix). Every flood is bounded by a packet
// count and a duration, both required and capped, and stops by itself at
// whichever comes first (or when its context ends).
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
//
// # Legitimate clients
//
// [RunProbes] starts legitimate clients at a fixed rate ([lab.Probe]: a
// real TCP connect, then GET of a small body whose content is checked,
// within a timeout), and a [ProbeTally] turns their results into a success
// ratio and nearest-rank latency percentiles ([Percentile]) over the
// clients that succeeded, with failures counted by kind.
//
// # Scenarios
//
// [Run] builds its own lab ([lab.Up]) for one address [Family]
// ([Config.Family]): IPv4 with the lab's IPv6 off, or IPv6, where the
// service, the flood's sources, the legitimate clients and every gateway
// rule (through ip6tables) are IPv6. Then for every offered rate it runs a
// baseline and each [System]: [Synguard] (`synguard run --mode always
// --queues N` in the gateway namespace, a fresh process per run, once for
// each of [Config.Queues]), [Synproxy] (the
// iptables-extensions manual's SYNPROXY recipe, in FORWARD, with the MSS
// and window scale read from the backend's own SYN-ACK) and [None] (plain
// forwarding to a backend with the kernel's SYN cookies). Before each run
// the backend is restarted and the gateway's conntrack table flushed, so
// no run inherits another's state. A run floods from the client namespace
// while legitimate clients connect, and reads:
//
//   - SYN-ACKs the gateway sends toward the spoofed sources, from a
//     match-only iptables rule in mangle POSTROUTING on its client side,
//     which every system's SYN-ACKs pass and which costs the same in every
//     run;
//   - CPU time, against the baseline at the same offered rate in which the
//     gateway drops the flood in raw PREROUTING ([CPUPerSYN]): the run time
//     of the benchmark's own tasks (this process, the lab's namespaces,
//     kernel threads; see sampleProcesses), and the whole machine's busy
//     time from /proc/stat ([ReadCPUTimes]) for comparison;
//   - synguard's queue drops, the packets each of its queues received and
//     its engine counters from its metrics, its peak RSS ([PeakRSS]) and
//     its own CPU time ([ProcessCPU]);
//   - the kernel's input-backlog drops ([ReadBacklogDrops]).
//
// # Report
//
// A [Report] is written as report.json, report.md (tables, a reading drawn
// from the numbers, the method) and PNG plots of SYN-ACK rate, legitimate
// success and CPU per SYN against offered load, drawn with gonum/plot,
// with a line per system and per synguard queue count. A run's "system"
// is always synguard, synproxy or none; its "queues" tells synguard's
// runs at one rate apart (0 for the kernel systems).
// [LoadReport] and [Report.Write] make the report files again from a
// recorded report.json.
package bench
