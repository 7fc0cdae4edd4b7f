package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/synguard/synguard/bench"
	"github.com/synguard/synguard/lab"
)

const benchUsage = `usage: synguard bench flood [flags]

  flood  send a bounded SYN flood with spoofed sources from the benchmarking
         range (198.18.0.0/15, or 2001:db8:ff00::/40 for IPv6), from the
         current network namespace; stops at --count or --duration
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "flood" {
		fmt.Fprint(stderr, benchUsage)
		if len(args) == 0 {
			return usagef("bench: no subcommand given")
		}
		return usagef("bench: unknown subcommand %q", args[0])
	}
	fs := flag.NewFlagSet("bench flood", flag.ContinueOnError)
	target := fs.String("target", "", "`ADDR:PORT` to flood")
	sources := fs.String("sources", "", "source `prefix` (default: the benchmarking range of the target's family)")
	rate := fs.Int("rate", 10000, "packets per `second` (0: as fast as possible)")
	count := fs.Int("count", 100000, "total `packets`")
	duration := fs.Duration("duration", 10*time.Second, "maximum `duration`")
	if err := parseFlags(fs, args[1:]); err != nil {
		return helpOK(err)
	}
	t, err := netip.ParseAddrPort(*target)
	if err != nil {
		return usagef("bench flood --target %q: want ADDR:PORT", *target)
	}
	cfg := bench.FloodConfig{Target: t, Rate: *rate, Count: *count, Duration: *duration}
	switch {
	case *sources != "":
		p, err := netip.ParsePrefix(*sources)
		if err != nil {
			return usagef("bench flood --sources %q: want a prefix", *sources)
		}
		cfg.Sources = p
	case t.Addr().Is4():
		cfg.Sources = lab.SpoofPrefix4
	default:
		cfg.Sources = lab.SpoofPrefix6
	}
	st, err := bench.Flood(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "sent %d SYNs in %s (%.0f/s), %d errors\n", st.Sent, st.Elapsed.Round(time.Millisecond), float64(st.Sent)/st.Elapsed.Seconds(), st.Errors)
	return nil
}
