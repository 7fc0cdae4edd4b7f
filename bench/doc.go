// Package bench measures how much SYN flood (or forged-ACK flood) a setup
// survives and what it costs legitimate clients: synguard with its XDP
// fast path, synguard through NFQUEUE alone, the kernel's SYNPROXY and an
// unprotected backend, side by side in one run on one machine.
//
// # Generator
//
// A [Flooder] sends packets of one [Kind] ([FloodConfig.Kind]) to one
// target. [KindSYN] (the default) is TCP SYNs that look like Linux's (MSS
// 1460 over IPv4 and 1440 over IPv6, as Linux announces on a 1500-byte
// MTU; SACK-permitted; timestamps; window scale 7; window 44 or 45
// segments) with random initial sequence numbers and timestamps.
// [KindACK] is forged ACKs: the ACK flag alone, random sequence and
// acknowledgement numbers, and otherwise what a Linux client's handshake
// ACK carries (NOP, NOP, timestamps with a random TSval and TSecr; window
// 502, 64240 bytes at scale 7), so that they belong to no connection and
// carry no valid cookie. One generator builds both, from random spoofed
// sources and random ports (1024-65535). The target must
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
// clients that succeeded, with failures counted by kind, and counts the
// clients whose SYN their kernel had to retransmit
// ([lab.ProbeResult.SYNRetransmits]): each one a handshake packet
// dropped on the way that cost its client at least 1 s. After the floods
// ([Config.ServerFirst]) every system is measured once more with clients
// of a protocol whose server speaks first ([lab.ProbeGreeting] against
// [lab.ServeGreeting]), with the backend's count of the ACKs it rejected.
//
// # Scenarios
//
// [Run] builds its own lab ([lab.Up]) for one address [Family]
// ([Config.Family]): IPv4 with the lab's IPv6 off, or IPv6, where the
// service, the flood's sources, the legitimate clients and every gateway
// rule (through ip6tables) are IPv6. It floods with one [Kind]
// ([Config.Attack]: SYNs by default, or forged ACKs). Then for every
// offered rate it runs a baseline and each [System], in the order of
// [AllSystems]: [Synguard] (`synguard run --mode always --queues N` in the
// gateway namespace with its defaults, so with its XDP fast path, which on
// the lab's veth links is --xdp auto's generic mode), [SynguardNFQueue]
// (the same with --xdp off: every packet through NFQUEUE), [Synproxy]
// (the iptables-extensions manual's SYNPROXY recipe, in FORWARD, with the
// MSS and window scale read from the backend's own SYN-ACK) and [None]
// (plain forwarding to a backend with the kernel's SYN cookies). Both
// synguard systems are a fresh process per run, run once for each of
// [Config.Queues]; with XDP the queues carry only what the program passes
// (legitimate clients' cookie ACKs and established flows), which a sweep
// over them then shows. Before each run the backend is restarted and the
// gateway's conntrack table flushed, so no run inherits another's state.
// The flood's sender, the legitimate clients and the backend are this
// process's goroutines; [Run] gives it twice as many Ps as CPUs, so that
// none waits for a P another holds and the kernel alone shares the CPUs,
// as among the separate processes they are outside the lab (setProcs).
// A run floods from the client namespace while legitimate clients
// connect, and reads:
//
//   - in a SYN flood, SYN-ACKs toward the spoofed sources that reach the
//     client namespace, from a match-only iptables rule in its raw
//     PREROUTING (packetCounter), which every system's SYN-ACKs pass
//     and which costs the same in every run;
//   - in a forged-ACK flood instead, the forged ACKs that reach the
//     backend (a match-only rule in the backend namespace's raw
//     PREROUTING) and the RSTs toward the spoofed sources that reach the
//     client namespace: what a system let through, and what the flood drew
//     back;
//   - CPU time, against the baseline at the same offered rate in which the
//     gateway drops the flood in raw PREROUTING (--syn, or the ACK flag
//     alone; [CPUPerSYN], per SYN or per forged ACK): the run time of the
//     benchmark's own tasks (this process, the lab's namespaces, kernel
//     threads; see sampleProcesses), and the whole machine's busy time
//     from /proc/stat ([ReadCPUTimes]) for comparison;
//   - synguard's queue drops, the packets each of its queues received, its
//     engine and XDP counters from its metrics, its peak RSS ([PeakRSS])
//     and its own CPU time ([ProcessCPU]);
//   - the kernel's input-backlog drops ([ReadBacklogDrops]).
//
// # Path
//
// Every run and baseline in report.json has a "path": how the flood was
// handled. A synguard run is "xdp" when its XDP program did the work over
// the run, read from the delta of synguard_xdp_packets_total: SYN-ACKs
// sent (action="tx" > 0) in a SYN flood, packets dropped (action="drop" >
// 0) in a forged-ACK flood, where the legitimate clients' SYNs are answered
// there whatever happens to the flood. It is "tc" when its tc program did
// (the same code at tc ingress: the BPF links the process holds, in
// /proc/PID/fdinfo, are tcx links), as --xdp auto has it on the lab's
// veth; otherwise it is "nfqueue", always so for synguard-nfqueue. synproxy, none and the baselines are "kernel":
// the field is never omitted, so that a reader of report.json need not
// know which systems have one. Reports recorded before the field are read
// as nfqueue for synguard, which had no XDP then, and kernel for the rest.
//
// # Report
//
// A [Report] is written as report.json, report.md (tables, a reading drawn
// from the numbers, the method) and PNG plots against offered load, drawn
// with gonum/plot, with a line per system and per synguard queue count:
// SYN-ACK rate (synack.png) or, for a forged-ACK flood, the forged ACKs
// reaching the backend (backend.png); legitimate success; CPU per SYN or
// per forged ACK. A run's "system" is always synguard, synguard-nfqueue,
// synproxy or none; its "queues" tells a synguard system's runs at one
// rate apart (0 for the kernel systems). Report.Attack says which flood
// it was, and each run carries that flood's keys only: syns_sent,
// synack_pps, cpu_us_per_syn, ... for a SYN flood; acks_sent,
// backend_ack_pps, rst_pps, cpu_us_per_ack, ... for a forged-ACK flood
// (reports recorded before the field are SYN floods). [LoadReport] and
// [Report.Write] make the report files again from a recorded report.json.
package bench
