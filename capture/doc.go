// Package capture writes packet samples of attacks as pcap files, for an
// operator to read with tcpdump or Wireshark or hand to someone: one file
// per attack, bounded in size, in a directory whose oldest files rotate
// out.
//
// # The file
//
// Files are classic pcap (microsecond timestamps, written with gopacket's
// pcapgo) of link type LINKTYPE_RAW (101): each record is an IPv4 or IPv6
// packet with no link-layer header, which tcpdump and Wireshark tell apart
// by the version nibble. The queue path has no other: NFQUEUE hands over
// IP packets, and their Ethernet header could only be made up. A
// link-layer path (XDP sees Ethernet frames) strips it with
// [FromEthernet]. Read one with
//
//	tcpdump -nn -r synguard-192.0.2.10_80-20260301T120405.678Z.pcap
//
// # What a Sampler keeps
//
// A [Sampler] takes an attack's packets through [Sampler.Offer] and keeps:
//
//   - the first [Config.First] (1000 by default), all of them;
//   - after those, at most [Config.Rate] a second (10): a token bucket
//     timed by the packets' own timestamps, which starts empty and holds
//     one second's worth, so a long attack stays represented to its end
//     and a burst after a lull takes Rate packets at most;
//   - of each packet, [Config.Snaplen] bytes (128): the IP and TCP headers
//     with their options (a SYN is 60 to 80 bytes), not the payload;
//   - while the file stays within [Config.MaxBytes] (8 MiB), headers
//     counted: the first 1000 SYNs take 80 to 100 KB, the trickle under
//     1 KB/s, so a file spans hours.
//
// Every offered packet is counted in [Counts] as written, skipped (by the
// rate), over size, or dropped (the ring was full, or the file failed).
//
// # Never blocking the packet path
//
// Offer copies the packet into a ring of [Config.Ring] preallocated slots
// (1024: 144 KB with the default snaplen, taken when the Sampler starts)
// under a mutex held for the copy only, and wakes the Sampler's writer
// goroutine, which writes waiting packets in batches through a buffer and
// flushes it whenever the ring runs empty. Offer never waits for the
// disk and allocates nothing: when the writer falls behind, the ring
// fills and packets are dropped and counted. It costs 30 to 90 ns, the
// same whether the packet is copied, skipped or dropped. [Sampler.Close]
// writes what is waiting, closes the file and returns its path and counts,
// with the first write error.
//
// # The directory
//
// A [Dir] (--capture-dir) names each attack's file
// synguard-SERVICE-START.pcap: the service made safe for a file name by
// [SafeName] ("192.0.2.10_80", "2001_db8__10_443"), the attack's start in
// UTC to the millisecond, and "-2", "-3"... should two collide. It creates
// the directory with mode 0750 and files with 0640 (less under a stricter
// umask), and refuses at [OpenDir], not at the first attack, a path that
// is not a directory or where no file can be created (such as a read-only
// mount).
//
// Before each new file, [Dir.Start] deletes the oldest finished captures,
// by the start time in their names, until the files number at most
// [DirConfig.MaxFiles] (100) and their sizes add up to at most
// [DirConfig.MaxBytes] (256 MiB), a capture still being written counting
// as its MaxBytes. A file counts as a capture only if its name is one
// Start gives, it is a regular file (not a link) and it begins with the
// header a Sampler writes; nothing else in the directory is read past
// that header, let alone deleted. When captures being written take the
// whole budget, Start returns [ErrFull].
//
// # Feeding it
//
// At an attack's start, [Dir.Start] for the service; while it lasts, the
// queue workers Offer the service's SYNs (the packet NFQUEUE handed over,
// with its time), and a fast path that samples frames Offers what
// FromEthernet returns; at its end, Close, and the attack_end event names
// [Result.Path]. One Sampler is safe for all of them at once.
package capture
