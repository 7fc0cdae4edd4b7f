package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// base returns a valid gateway-mode config for svcs with the default marks.
func base(svcs ...string) Config {
	c := Config{Queue: 0, Queues: 1, EngineMark: DefaultEngineMark, HandoffMark: DefaultHandoffMark}
	for _, s := range svcs {
		c.Services = append(c.Services, netip.MustParseAddrPort(s))
	}
	return c
}

// TestRules renders each configuration and compares it with the golden
// file testdata/rules/NAME.golden.
func TestRules(t *testing.T) {
	tests := []struct {
		name, golden string
		cfg          func() Config
	}{
		{
			name:   "one v4 service, gateway",
			golden: "gateway-v4",
			cfg:    func() Config { return base("203.0.113.10:80") },
		},
		{
			name:   "two v4 and one v6 service, own marks and queue",
			golden: "gateway-dual-own-marks",
			cfg: func() Config {
				c := base("203.0.113.10:80", "[2001:db8::10]:443", "203.0.113.11:8443")
				c.Queue, c.EngineMark, c.HandoffMark = 7, 0x10, 0x20
				return c
			},
		},
		{
			name:   "local mode",
			golden: "local-v4",
			cfg: func() Config {
				c := base("203.0.113.10:22")
				c.Local = true
				return c
			},
		},
		{
			name:   "queue balance",
			golden: "queue-balance",
			cfg: func() Config {
				c := base("203.0.113.10:80")
				c.Queue, c.Queues = 4, 4
				return c
			},
		},
		{
			name:   "fail open, v6 only, balanced",
			golden: "fail-open-v6-balanced",
			cfg: func() Config {
				c := base("[2001:db8::10]:80")
				c.FailOpen, c.Queues = true, 2
				return c
			},
		},
		{
			name:   "fail open, one queue",
			golden: "fail-open-one-queue",
			cfg: func() Config {
				c := base("198.51.100.1:443")
				c.FailOpen, c.Queue = true, 65534
				return c
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Rules(tt.cfg())
			if err != nil {
				t.Fatal(err)
			}
			goldenRules(t, "rules/"+tt.golden, got)
		})
	}
}

// goldenRules compares rs with the golden file testdata/NAME.golden, which
// holds it as `synguard rules` prints it: each family's iptables-restore
// input under a heading, a family without rules left out.
func goldenRules(t *testing.T, name string, rs Ruleset) {
	t.Helper()
	golden(t, name+".golden", rs.String())
}

func TestRulesInvalidConfig(t *testing.T) {
	c := base("203.0.113.10:80")
	c.Queues = 0
	if rs, err := Rules(c); err == nil {
		t.Fatalf("Rules accepted Queues 0 and rendered:\n%s", rs)
	}
}

func TestRulesetString(t *testing.T) {
	rs := Ruleset{IPv4: "*raw\nCOMMIT\n", IPv6: "*filter\nCOMMIT\n"}
	want := `# IPv4: iptables-restore --noflush
*raw
COMMIT

# IPv6: ip6tables-restore --noflush
*filter
COMMIT
`
	if diff := cmp.Diff(want, rs.String()); diff != "" {
		t.Errorf("String (-want +got):\n%s", diff)
	}
	var b strings.Builder
	n, err := rs.WriteTo(&b)
	if err != nil || n != int64(len(want)) || b.String() != want {
		t.Errorf("WriteTo = %d, %v, %q; want %d, nil, the String text", n, err, b.String(), len(want))
	}

	if got, want := (Ruleset{IPv6: "*raw\nCOMMIT\n"}).String(), "# IPv6: ip6tables-restore --noflush\n*raw\nCOMMIT\n"; got != want {
		t.Errorf("IPv6 only: got %q, want %q", got, want)
	}
}

// TestRulesObserveFirstACK: ObserveFirstACK appends a mangle table whose
// rules mark a flow's first ACK and queue it
// (testdata/rules/observe-first-ack.golden), and changes nothing else;
// without it there is no mangle table at all.
func TestRulesObserveFirstACK(t *testing.T) {
	c := base("203.0.113.10:80")
	c.ObserveFirstACK = true
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	goldenRules(t, "rules/observe-first-ack", rs)
	c.ObserveFirstACK = false
	plain, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain.IPv4, "mangle") {
		t.Fatalf("mangle rules without ObserveFirstACK:\n%s", plain.IPv4)
	}
	if rest, ok := strings.CutPrefix(rs.IPv4, plain.IPv4); !ok || !strings.HasPrefix(rest, "*mangle\n") || rs.IPv6 != plain.IPv6 {
		t.Fatalf("ObserveFirstACK changed more than a mangle table at the end:\n%s\nwithout it:\n%s", rs, plain)
	}
}

// TestRulesReopenWithin: ReopenWithin sends the ACKs and SYN-ACKs of
// handed-off flows whose entry expires within that many seconds to a
// SYNGUARD-STALE chain that marks and queues them, ahead of the hand-off
// RETURN, in gateway and in local mode (testdata/rules/reopen-within*.golden);
// a stale mark equal to the hand-off mark is refused.
func TestRulesReopenWithin(t *testing.T) {
	c := base("203.0.113.10:80")
	c.ReopenWithin, c.StaleMark = 120, DefaultStaleMark
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	goldenRules(t, "rules/reopen-within", rs)
	// Local mode: the client side's rule in INPUT, the service side's in
	// OUTPUT, each before that chain's hand-off RETURN.
	c.Local = true
	if rs, err = Rules(c); err != nil {
		t.Fatal(err)
	}
	goldenRules(t, "rules/reopen-within-local", rs)
	for _, want := range []string{
		"-A SYNGUARD-INPUT -m mark --mark 0x53470001 -j RETURN\n-A SYNGUARD-INPUT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK ACK -m connmark --mark 0x53470002 -m conntrack --ctstate ESTABLISHED --ctexpire 0:120 -j SYNGUARD-STALE\n-A SYNGUARD-INPUT -m connmark --mark 0x53470002 -j RETURN\n",
		"-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j RETURN\n-A SYNGUARD-OUTPUT -s 203.0.113.10/32 -p tcp -m tcp --sport 80 --tcp-flags FIN,SYN,RST,ACK SYN,ACK -m connmark --mark 0x53470002 -m conntrack --ctstate ESTABLISHED --ctexpire 0:120 -j SYNGUARD-STALE\n-A SYNGUARD-OUTPUT -m connmark --mark 0x53470002 -j RETURN\n",
	} {
		if !strings.Contains(rs.IPv4, want) {
			t.Errorf("local rules lack\n%s\nin:\n%s", want, rs.IPv4)
		}
	}
	c.StaleMark = c.HandoffMark
	if _, err := Rules(c); err == nil {
		t.Fatal("a stale mark equal to the hand-off mark was accepted")
	}
}

// TestRulesQueueSplit: of every configuration's queued segments, client
// SYNs (the raw table's rules) go to the SYN queues Queue..Queue+Queues-1
// and everything else (the filter rules of both directions, the stale
// and first-ACK chains) to the completion queues right after them, with
// one target for each kind: a handshake's end never waits behind SYNs.
func TestRulesQueueSplit(t *testing.T) {
	for _, tc := range []struct {
		name              string
		edit              func(*Config)
		syn, completion   string // the targets' queue options
		synRules, ctRules int    // rules queueing to each, over both families
	}{
		{"one queue", func(*Config) {}, "--queue-num 0", "--queue-num 1", 2, 4},
		{"first queue 7", func(c *Config) { c.Queue = 7 }, "--queue-num 7", "--queue-num 8", 2, 4},
		{"two queues, fail open", func(c *Config) { c.Queues, c.FailOpen = 2, true }, "--queue-balance 0:1 --queue-bypass", "--queue-balance 2:3 --queue-bypass", 2, 4},
		{"four queues from 10", func(c *Config) { c.Queue, c.Queues = 10, 4 }, "--queue-balance 10:13", "--queue-balance 14:17", 2, 4},
		{"last queue pair", func(c *Config) { c.Queue = 65534 }, "--queue-num 65534", "--queue-num 65535", 2, 4},
		{"every queued chain, local", func(c *Config) {
			c.Queues, c.Local, c.ReopenWithin, c.StaleMark, c.ObserveFirstACK = 3, true, 120, DefaultStaleMark, true
		}, "--queue-balance 0:2", "--queue-balance 3:5", 2, 8},
		{"every queued chain, gateway", func(c *Config) {
			c.ReopenWithin, c.StaleMark, c.ObserveFirstACK = 120, DefaultStaleMark, true
		}, "--queue-num 0", "--queue-num 1", 2, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base("203.0.113.10:80", "[2001:db8::10]:443")
			tc.edit(&c)
			rs, err := Rules(c)
			if err != nil {
				t.Fatal(err)
			}
			var syn, completion int
			for _, text := range []string{rs.IPv4, rs.IPv6} {
				table := ""
				for line := range strings.Lines(text) {
					line = strings.TrimSpace(line)
					if name, ok := strings.CutPrefix(line, "*"); ok {
						table = name
					}
					_, target, ok := strings.Cut(line, " -j NFQUEUE ")
					if !ok {
						continue
					}
					isSYN := table == "raw"
					if isSYN != strings.Contains(line, "--tcp-flags FIN,SYN,RST,ACK SYN ") {
						t.Errorf("in table %s, a rule that does not queue exactly the SYNs of raw: %s", table, line)
					}
					want := tc.completion
					if isSYN {
						want, syn = tc.syn, syn+1
					} else {
						completion++
					}
					if target != want {
						t.Errorf("%s rule queues to %q, want %q: %s", table, target, want, line)
					}
				}
			}
			if syn != tc.synRules || completion != tc.ctRules {
				t.Errorf("%d rules queue SYNs and %d the rest; want %d and %d", syn, completion, tc.synRules, tc.ctRules)
			}
			if got := c.SYNQueues().Last + 1; got != c.CompletionQueues().First {
				t.Errorf("completion queues %v do not follow SYN queues %v", c.CompletionQueues(), c.SYNQueues())
			}
		})
	}
}

func TestQueueRangeString(t *testing.T) {
	for r, want := range map[QueueRange]string{{0, 0}: "0", {3, 5}: "3..5", {65535, 65535}: "65535"} {
		if got := r.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", r, got, want)
		}
	}
}
