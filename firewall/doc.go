// Package firewall installs and removes the netfilter rules and sysctls the
// synguard gateway needs, and owns nothing else.
//
// # What gets installed
//
// All rules live in chains synguard owns, named SYNGUARD-<built-in chain>.
// Each is reached by one jump inserted at position 1 of its built-in chain,
// so synguard sees a packet before the operator's rules do; since its
// chains only RETURN or queue, everything else still goes through the
// operator's rules. IPv4 services are installed with iptables, IPv6 ones
// with ip6tables; the two rulesets mirror each other. `synguard rules`
// prints exactly the text Install applies. With one IPv4 service
// 203.0.113.10:80 in gateway mode, queue 0 (so SYN queue 0 and
// completion queue 1), fail closed and the default
// marks it is:
//
//	*raw
//	:SYNGUARD-PREROUTING - [0:0]
//	:SYNGUARD-OUTPUT - [0:0]
//	-I PREROUTING 1 -j SYNGUARD-PREROUTING
//	-I OUTPUT 1 -j SYNGUARD-OUTPUT
//	-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
//	-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 0
//	-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
//	COMMIT
//	*filter
//	:SYNGUARD-FORWARD - [0:0]
//	-I FORWARD 1 -j SYNGUARD-FORWARD
//	-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
//	-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
//	-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 1
//	-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 1
//	COMMIT
//
// raw SYNGUARD-PREROUTING, from PREROUTING:
//
//   - Packets carrying the engine mark: RETURN. In local mode the engine's
//     replayed SYN to a service on this host loops back through PREROUTING
//     (the skb mark survives the loopback device) and must not be queued a
//     second time. In gateway mode no such packet passes here; the rule
//     stays so both modes read the same.
//   - Per service, TCP segments to it with SYN set and FIN, RST and ACK
//     clear (a connection attempt): NFQUEUE. The raw table runs before
//     conntrack, so a SYN the engine drops leaves no conntrack entry: a
//     spoofed flood creates no state anywhere.
//
// raw SYNGUARD-OUTPUT, from OUTPUT:
//
//   - Packets carrying the engine mark: CT --notrack. The engine's SYN-ACKs,
//     replayed SYNs, ACKs, RSTs and window updates create no conntrack
//     entry. The flow's entry must be created by the engine itself over
//     ctnetlink (only such an entry can carry the sequence adjustment the
//     hand-off needs), and a half-open entry made by the kernel would be in
//     the way.
//
// filter SYNGUARD-FORWARD, from FORWARD (gateway mode), or SYNGUARD-INPUT
// from INPUT and SYNGUARD-OUTPUT from OUTPUT (local mode):
//
//   - Packets carrying the engine mark: RETURN. In local mode the engine's
//     own packets are untracked, come from or go to a service's address and
//     port, and would otherwise be queued by the rules below.
//   - Flows with the hand-off connmark: RETURN. Once the engine has handed a
//     flow to the kernel it is no business of synguard's. RETURN, not
//     ACCEPT: the flow goes on through the operator's own rules, so synguard
//     never bypasses the operator's policy.
//   - Per service, segments to it (FORWARD; INPUT in local mode) whose
//     conntrack state is INVALID or UNTRACKED: NFQUEUE. That is how the
//     client's ACK of a cookie SYN-ACK reaches the engine (conntrack has no
//     flow for it), and zero-window probes of a flow not yet handed off.
//   - Per service, segments from it (FORWARD; OUTPUT in local mode) whose
//     state is INVALID or UNTRACKED: NFQUEUE. That is the backend's SYN-ACK
//     or RST answering the engine's replayed SYN, which conntrack never saw.
//
// A queued packet that the engine accepts leaves the built-in chain there:
// an accept verdict ends the traversal of that table's chain, so the
// operator's later rules in it never see the packet (other tables and
// later hooks still do). For a SYN accepted in raw PREROUTING that skips
// only the operator's raw rules; the filter table still judges it. In the
// filter chains the engine should therefore drop what it consumes and
// accept only packets the operator's policy would pass anyway.
//
// # Marks
//
// The engine sets EngineMark (default DefaultEngineMark, 0x53470001) with
// SO_MARK on every packet it sends, and puts HandoffMark (default
// DefaultHandoffMark, 0x53470002) on the conntrack entry of every flow it
// hands off. Both are matched exactly, all 32 bits, so neither may be 0 nor
// collide with marks the operator's own rules use. The high half spells
// "SG" to make them easy to spot.
//
// # Queues
//
// Queues counts the SYN queues; synguard takes as many completion queues
// again. Client SYNs (the raw rule) go to the SYN queues Queue..
// Queue+Queues-1; every other queued segment (the filter rules of both
// directions, SYNGUARD-STALE, SYNGUARD-FIRSTACK) to the completion queues
// Queue+Queues..Queue+2*Queues-1, so a flood of SYNs filling its queues
// never delays the segments that complete handshakes. Validate requires
// the last of them to fit the 16-bit queue number.
//
// With one queue of a kind the target is --queue-num; with more it is
// --queue-balance FIRST:LAST, which picks the queue from a symmetric hash
// of the address pair, so a flow's client and backend packets reach the
// same completion queue and thus the same engine worker.
// --queue-cpu-fanout is never used: it picks the queue by CPU and breaks
// that affinity.
//
// # Fail open or fail closed
//
// FailOpen adds --queue-bypass: while no program is bound to a queue (the
// daemon is down or restarting), its packets pass as if the rules were not
// there; the backend is then unprotected but reachable. Without it (the
// zero value) such packets are dropped: the backend stays protected but is
// unreachable for new connections. It is the operator's choice. Note that
// --queue-bypass only covers an unbound queue: what happens to packets
// that find a bound queue full is set by the engine on the queue itself
// (the NFQA_CFG_F_FAIL_OPEN flag), not here.
//
// # Sysctls
//
// Install sets, and Remove puts back, these sysctls of the network
// namespace, changing only those not already at the wanted value:
//
//   - net.netfilter.nf_conntrack_tcp_loose=0, so conntrack never adopts a
//     mid-stream segment (such as a cookie ACK) as a new established flow;
//     with it on, cookie ACKs would be tracked instead of arriving INVALID
//     at the engine. The file exists only once nf_conntrack is loaded, which
//     the rules' conntrack match does, so Install sets it after the rules.
//   - In gateway mode net.ipv4.ip_forward=1 when IPv4 services exist, and
//     net.ipv6.conf.all.forwarding=1 when IPv6 services exist. Beware that
//     IPv6 forwarding makes the host ignore router advertisements unless
//     accept_ra=2, so a gateway configured by SLAAC needs that set first.
//
// Remove puts a sysctl back only if it still has the value Install set; if
// someone changed it since, their value stays.
//
// # Crashes and leftovers
//
// Install first calls RemoveLeftovers, which deletes every chain named
// SYNGUARD or SYNGUARD-* in every table of both families and every rule
// that jumps to one, so a crashed run never makes Install fail or leaves
// two copies of a rule. Each family's rules are then applied in one
// iptables-restore --noflush transaction: the rest of the ruleset is left
// alone, and a rejected rule leaves nothing half-installed. (With the
// nf_tables backend a table Install needed, such as raw, stays behind
// empty after Remove; an empty table with ACCEPT policies changes
// nothing.) The sysctl values Install replaced are also written to a
// record file per network namespace under RecordDir (/run/synguard), named
// by the namespace's cookie, and deleted once Remove has put them back.
// After a crash the sysctls keep synguard's values; the next Install in
// that namespace adopts the record, so its Remove restores the values the
// operator had before the crashed run (see sysctlrecord.go).
//
// # Drift and reload
//
// Other tools rewrite the ruleset: `iptables -F`, a firewalld reload, an
// iptables-restore without --noflush. Check compares the live ruleset,
// read with one save command per table synguard uses, with what Rules
// renders (the lines compare directly, being written as the save tools
// print them) and names each chain, jump or rule that is missing or
// differs; other tools' rules are not looked at. Restore puts back what
// drifted, one iptables-restore --noflush per family that redeclares the
// drifted tables' SYNGUARD chains (creating or flushing them) and refills
// them in one commit per table, inserting a jump only where none is left.
// A jump that is still there but no longer first is left in place:
// whoever went in front of it did so after synguard, and moving back on
// every check would fight a tool that also wants to be first.
//
// Replace swaps the rules to a new Config the same way, for a reload: new
// chains and jumps are added and those no longer needed deleted in the
// same commits, so a service in both configurations is never without its
// rules, and on failure the previous rules are put back. After Remove the
// three return ErrRemoved and do nothing.
//
// # Where it acts
//
// Config.Runner runs the iptables tools and reads and writes /proc/sys.
// The default, Host, acts in the network namespace of the calling process;
// tests substitute one that acts inside a namespace of their own.
package firewall
