package firewall

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// chainPrefix starts the name of every chain synguard owns. RemoveLeftovers
// deletes any chain with this prefix, and every rule that jumps to one.
const chainPrefix = "SYNGUARD"

// Ruleset is what Install applies, as iptables-restore input for
// `iptables-restore --noflush` (IPv4) and `ip6tables-restore --noflush`
// (IPv6). A family without services is empty and Install leaves it alone.
type Ruleset struct {
	IPv4 string
	IPv6 string
}

// String returns both families, each under a comment line naming the
// command that applies it.
func (r Ruleset) String() string {
	var b strings.Builder
	_, _ = r.WriteTo(&b)
	return b.String()
}

// WriteTo writes r as String formats it.
func (r Ruleset) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	for _, f := range families {
		text := f.rules(r)
		if text == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "# %s: %s --noflush\n%s", f.name, f.restore, text)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// family is one address family and the tools that handle it.
type family struct {
	name    string
	restore string // iptables-restore or ip6tables-restore
	save    string // iptables-save or ip6tables-save
	bits    int    // prefix length of a single address
	is      func(netip.Addr) bool
	rules   func(Ruleset) string
}

var families = []family{
	{"IPv4", "iptables-restore", "iptables-save", 32, netip.Addr.Is4, func(r Ruleset) string { return r.IPv4 }},
	{"IPv6", "ip6tables-restore", "ip6tables-save", 128, netip.Addr.Is6, func(r Ruleset) string { return r.IPv6 }},
}

// Rules renders exactly what Install applies for c.
func Rules(c Config) (Ruleset, error) {
	if err := c.Validate(); err != nil {
		return Ruleset{}, err
	}
	return Ruleset{IPv4: render(c, families[0]), IPv6: render(c, families[1])}, nil
}

// render writes the iptables-restore input for one family, or "" when no
// service belongs to it. Rules are written in the canonical form
// iptables-save prints them in, so the saved ruleset can be compared with
// this text line by line.
func render(c Config, f family) string {
	var b strings.Builder
	for _, t := range tablesFor(c, f) {
		t.writeTo(&b)
	}
	return b.String()
}

// tablesFor returns what synguard puts in each table of one family, in the
// order Install applies them; none when no service belongs to the family.
func tablesFor(c Config, f family) []*table {
	var svcs []netip.AddrPort
	for _, s := range c.Services {
		if f.is(s.Addr()) {
			svcs = append(svcs, s)
		}
	}
	if len(svcs) == 0 {
		return nil
	}

	engine := fmt.Sprintf("-m mark --mark %#x", c.EngineMark)
	handoff := fmt.Sprintf("-m connmark --mark %#x", c.HandoffMark)
	// SYNs and the segments that complete handshakes go to queues of
	// their own, so that a flood of SYNs never delays a handshake's end.
	synQueue, completionQueue := queueTarget(c, c.SYNQueues()), queueTarget(c, c.CompletionQueues())
	const synOnly = "--tcp-flags FIN,SYN,RST,ACK SYN"
	const stray = "-m conntrack --ctstate INVALID,UNTRACKED"
	dst := func(s netip.AddrPort) string {
		return fmt.Sprintf("-d %s/%d -p tcp -m tcp --dport %d", s.Addr(), f.bits, s.Port())
	}
	src := func(s netip.AddrPort) string {
		return fmt.Sprintf("-s %s/%d -p tcp -m tcp --sport %d", s.Addr(), f.bits, s.Port())
	}

	// raw: before conntrack. SYNs go to the engine, and the engine's own
	// packets are kept out of conntrack.
	raw := &table{name: "raw"}
	raw.chain("PREROUTING", engine+" -j RETURN")
	for _, s := range svcs {
		raw.rule(dst(s) + " " + synOnly + " " + synQueue)
	}
	raw.chain("OUTPUT", engine+" -j CT --notrack")

	// filter: after conntrack. Segments conntrack knows no flow for go to
	// the engine, except the engine's own and those of handed-off flows.
	filter := &table{name: "filter"}
	in, out := "FORWARD", "FORWARD"
	if c.Local {
		in, out = "INPUT", "OUTPUT"
	}
	// A handed-off flow whose entry is about to expire (closing, or in
	// TIME_WAIT) goes to the engine before the hand-off RETURN: a client
	// reusing its ports must not be matched to the old entry.
	//
	// Only what a reusing client and its backend send are caught: the
	// client's ACKs without FIN (its cookie ACK, a zero-window probe, the
	// request behind them) and the backend's SYN-ACK to the replayed SYN.
	// Of the old flow itself only its final ACK matches, once per flow
	// (its FINs do not).
	closing := func(flags string) string {
		return fmt.Sprintf(" --tcp-flags %s %s -m conntrack --ctstate ESTABLISHED --ctexpire 0:%d -j %s", flags, handoff, c.ReopenWithin, staleChain)
	}
	closingFromClient := closing("FIN,SYN,RST,ACK ACK")
	closingFromService := closing("FIN,SYN,RST,ACK SYN,ACK")
	toService := func() {
		for _, s := range svcs {
			filter.rule(dst(s) + " " + stray + " " + completionQueue)
		}
	}
	fromService := func() {
		for _, s := range svcs {
			filter.rule(src(s) + " " + stray + " " + completionQueue)
		}
	}
	closingRules := func(match func(netip.AddrPort) string, tail string) {
		if c.ReopenWithin == 0 {
			return
		}
		for _, s := range svcs {
			filter.rule(match(s) + tail)
		}
	}
	if in == out {
		filter.chain(in, engine+" -j RETURN")
		closingRules(dst, closingFromClient)
		closingRules(src, closingFromService)
		filter.rule(handoff + " -j RETURN")
		toService()
		fromService()
	} else {
		filter.chain(in, engine+" -j RETURN")
		closingRules(dst, closingFromClient)
		filter.rule(handoff + " -j RETURN")
		toService()
		filter.chain(out, engine+" -j RETURN")
		closingRules(src, closingFromService)
		filter.rule(handoff + " -j RETURN")
		fromService()
	}
	if c.ReopenWithin > 0 {
		filter.subchain(staleChain,
			fmt.Sprintf("-j MARK --set-xmark %#x/0xffffffff", c.StaleMark),
			completionQueue)
	}
	tables := []*table{raw, filter}

	// mangle: after conntrack, before filter. The first established packet
	// of a flow synguard let through (connmark still 0) gets the hand-off
	// connmark and visits the engine once, which counts its handshake as
	// complete; later packets carry the mark and pass. In mangle an accept
	// verdict ends only the mangle chain: the operator's filter rules still
	// judge the packet.
	if c.ObserveFirstACK {
		mangle := &table{name: "mangle"}
		mangle.chain("PREROUTING")
		for _, s := range svcs {
			mangle.rule(dst(s) + " -m conntrack --ctstate ESTABLISHED -m connmark --mark 0x0 -j " + firstACKChain)
		}
		mangle.subchain(firstACKChain,
			fmt.Sprintf("-j CONNMARK --set-xmark %#x/0xffffffff", c.HandoffMark),
			completionQueue)
		tables = append(tables, mangle)
	}
	return tables
}

// staleChain marks and queues a segment of a flow whose entry is closing.
const staleChain = chainPrefix + "-STALE"

// firstACKChain marks and queues the first established packet of a flow.
const firstACKChain = chainPrefix + "-FIRSTACK"

// queueTarget is the NFQUEUE target to the queues r, with its options.
func queueTarget(c Config, r QueueRange) string {
	q := fmt.Sprintf("-j NFQUEUE --queue-num %d", r.First)
	if r.Last > r.First {
		q = fmt.Sprintf("-j NFQUEUE --queue-balance %d:%d", r.First, r.Last)
	}
	if c.FailOpen {
		q += " --queue-bypass"
	}
	return q
}

// table is what synguard puts in one table: its own chains, the jumps to
// them from built-in chains, and their rules. iptables-restore wants a
// table's chain declarations before its rules; writeTo puts the jumps next
// and then the chains' rules, the order iptables-save prints them in.
type table struct {
	name   string
	chains []string // owned chains, in the order they are declared
	jumps  []jump   // each inserted at position 1 of its built-in chain
	rules  []string // "-A SYNGUARD-X ..."
	cur    string   // the chain rule appends to
}

// jump goes from a built-in chain to one of synguard's.
type jump struct{ from, to string }

// insert is the iptables-restore line that puts j first in its chain.
func (j jump) insert() string { return "-I " + j.from + " 1 -j " + j.to }

// saved is j as iptables-save prints it.
func (j jump) saved() string { return "-A " + j.from + " -j " + j.to }

// chain declares the chain SYNGUARD-builtin, jumps to it from the first
// position of the built-in chain, and appends rules to it. Later calls of
// rule append to it too.
func (t *table) chain(builtin string, rules ...string) {
	t.subchain(chainPrefix+"-"+builtin, rules...)
	t.jumps = append(t.jumps, jump{builtin, t.cur})
}

// subchain declares a chain reached only from other SYNGUARD chains and
// appends rules to it.
func (t *table) subchain(name string, rules ...string) {
	t.cur = name
	t.chains = append(t.chains, name)
	for _, r := range rules {
		t.rule(r)
	}
}

func (t *table) rule(spec string) {
	t.rules = append(t.rules, "-A "+t.cur+" "+spec)
}

// declarations are the lines that create t's chains, or flush them where
// they exist.
func (t *table) declarations() []string {
	out := make([]string, len(t.chains))
	for k, c := range t.chains {
		out[k] = ":" + c + " - [0:0]"
	}
	return out
}

func (t *table) writeTo(b *strings.Builder) {
	b.WriteString("*" + t.name + "\n")
	for _, l := range t.declarations() {
		b.WriteString(l + "\n")
	}
	for _, j := range t.jumps {
		b.WriteString(j.insert() + "\n")
	}
	for _, l := range t.rules {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
}
