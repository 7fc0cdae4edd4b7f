package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// synackComment tags the rule that counts SYN-ACKs, so that it is found
// again in iptables-save output.
const synackComment = "sgbench-synack"

// synackCounter counts the SYN-ACKs toward the flood's spoofed sources
// that reach the client namespace, with one match-only rule in its raw
// PREROUTING on the interface facing the gateway.
//
// Counting where they arrive, not where they leave, counts every system
// alike whatever way its SYN-ACKs leave the gateway: synguard's by default
// go straight out of the interface the SYN came in on, past the gateway's
// output hooks, while SYNPROXY's cross them (ip_local_out) and the
// unprotected backend's are forwarded. And a SYN-ACK that went astray is
// not counted as answered. A rule counter costs one rule evaluation per
// packet, the same in every run; copying 300k packets a second to a
// capture socket would cost more than what is measured.
type synackCounter struct {
	ns  *netns.NS
	fam netFamily
}

func (c synackCounter) rule() []string {
	return []string{"PREROUTING", "-i", lab.ClientIface, "-d", c.fam.spoof.String(),
		"-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN,ACK",
		"-m", "comment", "--comment", synackComment}
}

func (c synackCounter) install(ctx context.Context) error {
	return iptables(ctx, c.ns, c.fam.iptables, append([]string{"-t", "raw", "-A"}, c.rule()...)...)
}

func (c synackCounter) remove(ctx context.Context) error {
	return iptables(ctx, c.ns, c.fam.iptables, append([]string{"-t", "raw", "-D"}, c.rule()...)...)
}

// read returns the packets the rule has matched so far.
func (c synackCounter) read(ctx context.Context) (uint64, error) {
	out, err := c.ns.Output(ctx, c.fam.iptablesSave, "-c", "-t", "raw")
	if err != nil {
		return 0, err
	}
	return ruleCounter(strings.NewReader(out), synackComment)
}

// ruleCounter finds the one rule in iptables-save -c output whose comment
// is comment and returns its packet counter. The lines look like
//
//	[1234:56789] -A POSTROUTING ... -m comment --comment sgbench-synack
func ruleCounter(r io.Reader, comment string) (uint64, error) {
	var (
		found bool
		n     uint64
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "[") || !strings.Contains(line, "--comment "+comment) {
			continue
		}
		if found {
			return 0, fmt.Errorf("iptables-save: more than one rule tagged %s", comment)
		}
		end := strings.IndexByte(line, ']')
		pkts, _, ok := strings.Cut(line[1:max(end, 1)], ":")
		if end < 0 || !ok {
			return 0, fmt.Errorf("iptables-save: bad counters in %q", line)
		}
		v, err := strconv.ParseUint(pkts, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("iptables-save: bad packet counter in %q: %w", line, err)
		}
		found, n = true, v
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("iptables-save: no rule tagged %s", comment)
	}
	return n, nil
}
