package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// Comments tag the counting rules, so that each is found again in
// iptables-save output.
const (
	synackComment     = "sgbench-synack"
	rstComment        = "sgbench-rst"
	backendACKComment = "sgbench-backend-ack"
)

// packetCounter counts packets with one match-only iptables rule in raw
// PREROUTING of a lab namespace: a rule evaluation per packet, the same
// in every run, where copying 300k packets a second to a capture socket
// would cost more than what is measured.
type packetCounter struct {
	ns  *netns.NS
	fam netFamily
	// match is the rule's chain and matches, without the comment.
	match   []string
	comment string
}

// synackCounter counts the SYN-ACKs toward the flood's spoofed sources
// that reach the client namespace, on its interface facing the gateway.
//
// Counting where they arrive, not where they leave, counts every system
// alike whatever way its SYN-ACKs leave the gateway: synguard's by default
// go straight out of the interface the SYN came in on (or are sent back
// by its XDP program), past the gateway's output hooks, while SYNPROXY's
// cross them (ip_local_out) and the unprotected backend's are forwarded.
// And a SYN-ACK that went astray is not counted as answered.
func synackCounter(ns *netns.NS, fam netFamily) packetCounter {
	return packetCounter{ns: ns, fam: fam, comment: synackComment, match: []string{
		"PREROUTING", "-i", lab.ClientIface, "-d", fam.spoof.String(),
		"-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN,ACK"}}
}

// rstCounter counts the RSTs toward the flood's spoofed sources that
// reach the client namespace: what a forged-ACK flood reflects (an
// unprotected backend answers every ACK to its listening socket with one).
func rstCounter(ns *netns.NS, fam netFamily) packetCounter {
	return packetCounter{ns: ns, fam: fam, comment: rstComment, match: []string{
		"PREROUTING", "-i", lab.ClientIface, "-d", fam.spoof.String(),
		"-p", "tcp", "--tcp-flags", "RST", "RST"}}
}

// backendACKCounter counts the forged ACKs that reach the backend
// namespace: segments from the spoofed sources to the service with the
// ACK flag alone, on the backend's interface facing the gateway.
func backendACKCounter(ns *netns.NS, fam netFamily, service netip.AddrPort) packetCounter {
	return packetCounter{ns: ns, fam: fam, comment: backendACKComment, match: []string{
		"PREROUTING", "-i", lab.BackendIface, "-s", fam.spoof.String(), "-d", service.Addr().String(),
		"-p", "tcp", "--dport", strconv.Itoa(int(service.Port())), "--tcp-flags", "SYN,ACK,RST,FIN", "ACK"}}
}

func (c packetCounter) rule() []string {
	return append(slices.Clone(c.match), "-m", "comment", "--comment", c.comment)
}

func (c packetCounter) install(ctx context.Context) error {
	return iptables(ctx, c.ns, c.fam.iptables, append([]string{"-t", "raw", "-A"}, c.rule()...)...)
}

// read returns the packets the rule has matched so far.
func (c packetCounter) read(ctx context.Context) (uint64, error) {
	out, err := c.ns.Output(ctx, c.fam.iptablesSave, "-c", "-t", "raw")
	if err != nil {
		return 0, err
	}
	return ruleCounter(strings.NewReader(out), c.comment)
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
