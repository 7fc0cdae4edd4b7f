// Package heavyhitter counts a service's SYNs by source prefix in fixed
// memory, to answer an operator's "from where?" during a flood: which /24
// (IPv4) or /48 (IPv6) prefixes send the most SYNs, whether their
// handshakes complete, and whether the flood is spread over countless
// prefixes (spoofed) or comes from a few (real hosts, blockable upstream).
//
// # What it counts
//
// A [Sketch] takes SYNs ([Sketch.Observe], [Sketch.ObserveN],
// [Sketch.ObserveKeys]) and completed handshakes ([Sketch.Complete]) and
// reports the heaviest prefixes ([Sketch.Top]) and totals with the
// spread ([Sketch.Summary]). [Sketch.Reset] starts over for a new attack.
// An IPv4-mapped IPv6 source counts as its IPv4 address; [Key] is a
// prefix packed into one comparable word.
//
// # Bounds and error
//
// Top is a space-saving summary of m counters ([Config.Capacity], 64 by
// default): a prefix it does not track takes over the smallest counter and
// inherits that counter's count as its error. For N SYNs in all:
//
//   - every count is an overestimate: the truth lies in
//     [SYNs-Err, SYNs] ([Entry.Guaranteed]);
//   - the smallest count, [Summary.Floor], is at most N/m and bounds every
//     Err, and every prefix that sent more than Floor SYNs is tracked: the
//     ten heaviest are reported whenever the tenth outweighs the eleventh
//     by more than Floor, which a flood with heavy sources gives at once;
//   - the counts add up to N exactly.
//
// Completions are counted per tracked prefix, from the time it was last
// taken into the summary: [Entry.Completed] never exceeds the truth, and
// equals it for a prefix tracked since its first SYN, as a heavy one is.
// A prefix of real clients (or a NAT in front of them) shows completions;
// a flood's prefix shows none. The totals are exact.
//
// The spread is the share of SYNs from prefixes seen in one observation
// only: near 1 for a flood with random (spoofed) sources, near 0 for one
// from a few prefixes. It is estimated from an adaptive sample: every
// prefix whose keyed hash falls in a part of the hash space that halves
// whenever the sample ([Config.SampleSize], 1024 by default) fills up,
// each with its exact history. While every prefix fits, [Summary.Exact]
// is set and spread and [Summary.Distinct] are exact counts; beyond, they
// are unbiased estimates from between SampleSize/2 and SampleSize
// prefixes, with a relative standard error of about 1/sqrt(n) for n
// sampled prefixes seen once: near 4% at the default size for a spoofed
// flood. (A count-min sketch would not do: it overestimates, so once the
// distinct prefixes outnumber its cells no prefix looks new, and a
// spoofed flood would read as no spread at all.)
//
// Spread measures prefixes seen once since the last Reset, so a long
// spoofed IPv4 flood reads lower as the 2^24 /24s start to repeat: about
// exp(-N/2^24), 0.66 after 7 million SYNs. Distinct, which keeps growing
// toward 2^24, tells the two apart then. IPv6 /48s do not repeat.
//
// # Memory and cost
//
// All memory is allocated by [New]: 37 KB with the default config, the
// same after a billion SYNs. Nothing else allocates. A SYN costs 35 to
// 70 ns on one core (more when it displaces a counter, as every SYN of a
// spoofed flood does); a top 10 with the summary under 0.5 µs. Hashes
// are keyed with a random seed, so senders cannot aim at the index or the
// sample.
//
// # Feeding it
//
// One Sketch per service, shared by every goroutine that sees its
// traffic: the methods lock a mutex. A SYN holds it for well under 100 ns,
// so at 700,000 SYN/s the lock is busy about 5% of the time and rarely
// contended (BenchmarkObserveParallel). One shared sketch rather than one
// per worker, because completions arrive on other goroutines than the
// SYNs they complete (hand-off goroutines, the first-ACK path) and must
// find the prefix's entry, and merging space-saving summaries adds their
// errors.
//
//   - a queue worker calls Observe for each SYN of the service (or
//     collects keys with [PrefixOf] and calls ObserveKeys once a receive
//     batch: one lock for up to 64 SYNs);
//   - a sampled fast path that reports one SYN in n calls ObserveN(src,
//     n) per sample: counts and totals then estimate the true SYNs, and
//     "seen once" means seen once in the sample, so prefixes that sent
//     fewer than about n SYNs count as spread;
//   - whoever sees a handshake complete calls Complete with the client's
//     address;
//   - a reader calls Top and Summary, once a second or at an attack's end,
//     into a buffer it keeps.
package heavyhitter
