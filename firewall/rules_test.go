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

func TestRules(t *testing.T) {
	tests := []struct {
		name       string
		cfg        func() Config
		ipv4, ipv6 string
	}{
		{
			name: "one v4 service, gateway",
			cfg:  func() Config { return base("203.0.113.10:80") },
			ipv4: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 0
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
COMMIT
`,
		},
		{
			name: "two v4 and one v6 service, own marks and queue",
			cfg: func() Config {
				c := base("203.0.113.10:80", "[2001:db8::10]:443", "203.0.113.11:8443")
				c.Queue, c.EngineMark, c.HandoffMark = 7, 0x10, 0x20
				return c
			},
			ipv4: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x10 -j RETURN
-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 7
-A SYNGUARD-PREROUTING -d 203.0.113.11/32 -p tcp -m tcp --dport 8443 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 7
-A SYNGUARD-OUTPUT -m mark --mark 0x10 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x10 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x20 -j RETURN
-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
-A SYNGUARD-FORWARD -d 203.0.113.11/32 -p tcp -m tcp --dport 8443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
-A SYNGUARD-FORWARD -s 203.0.113.11/32 -p tcp -m tcp --sport 8443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
COMMIT
`,
			ipv6: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x10 -j RETURN
-A SYNGUARD-PREROUTING -d 2001:db8::10/128 -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 7
-A SYNGUARD-OUTPUT -m mark --mark 0x10 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x10 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x20 -j RETURN
-A SYNGUARD-FORWARD -d 2001:db8::10/128 -p tcp -m tcp --dport 443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
-A SYNGUARD-FORWARD -s 2001:db8::10/128 -p tcp -m tcp --sport 443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 7
COMMIT
`,
		},
		{
			name: "local mode",
			cfg: func() Config {
				c := base("203.0.113.10:22")
				c.Local = true
				return c
			},
			ipv4: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 0
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
COMMIT
*filter
:SYNGUARD-INPUT - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I INPUT 1 -j SYNGUARD-INPUT
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-INPUT -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-INPUT -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-INPUT -d 203.0.113.10/32 -p tcp -m tcp --dport 22 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-OUTPUT -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-OUTPUT -s 203.0.113.10/32 -p tcp -m tcp --sport 22 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
COMMIT
`,
		},
		{
			name: "queue balance",
			cfg: func() Config {
				c := base("203.0.113.10:80")
				c.Queue, c.Queues = 4, 4
				return c
			},
			ipv4: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-balance 4:7
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 4:7
-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 4:7
COMMIT
`,
		},
		{
			name: "fail open, v6 only, balanced",
			cfg: func() Config {
				c := base("[2001:db8::10]:80")
				c.FailOpen, c.Queues = true, 2
				return c
			},
			ipv6: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-PREROUTING -d 2001:db8::10/128 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-balance 0:1 --queue-bypass
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-FORWARD -d 2001:db8::10/128 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 0:1 --queue-bypass
-A SYNGUARD-FORWARD -s 2001:db8::10/128 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-balance 0:1 --queue-bypass
COMMIT
`,
		},
		{
			name: "fail open, one queue",
			cfg: func() Config {
				c := base("198.51.100.1:443")
				c.FailOpen, c.Queue = true, 65535
				return c
			},
			ipv4: `*raw
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-OUTPUT - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-I OUTPUT 1 -j SYNGUARD-OUTPUT
-A SYNGUARD-PREROUTING -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-PREROUTING -d 198.51.100.1/32 -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE --queue-num 65535 --queue-bypass
-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack
COMMIT
*filter
:SYNGUARD-FORWARD - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-FORWARD -d 198.51.100.1/32 -p tcp -m tcp --dport 443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 65535 --queue-bypass
-A SYNGUARD-FORWARD -s 198.51.100.1/32 -p tcp -m tcp --sport 443 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 65535 --queue-bypass
COMMIT
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Rules(tt.cfg())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.ipv4, got.IPv4); diff != "" {
				t.Errorf("IPv4 rules (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.ipv6, got.IPv6); diff != "" {
				t.Errorf("IPv6 rules (-want +got):\n%s", diff)
			}
		})
	}
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

func TestRulesObserveFirstACK(t *testing.T) {
	c := base("203.0.113.10:80")
	c.ObserveFirstACK = true
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	const want = `*mangle
:SYNGUARD-PREROUTING - [0:0]
:SYNGUARD-FIRSTACK - [0:0]
-I PREROUTING 1 -j SYNGUARD-PREROUTING
-A SYNGUARD-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate ESTABLISHED -m connmark --mark 0x0 -j SYNGUARD-FIRSTACK
-A SYNGUARD-FIRSTACK -j CONNMARK --set-xmark 0x53470002/0xffffffff
-A SYNGUARD-FIRSTACK -j NFQUEUE --queue-num 0
COMMIT
`
	_, mangle, ok := strings.Cut(rs.IPv4, "COMMIT\n*mangle\n")
	if !ok {
		t.Fatalf("no mangle table:\n%s", rs.IPv4)
	}
	if diff := cmp.Diff(want, "*mangle\n"+mangle); diff != "" {
		t.Fatalf("mangle rules (-want +got):\n%s", diff)
	}
	// Without it, no mangle table at all.
	c.ObserveFirstACK = false
	if rs, _ := Rules(c); strings.Contains(rs.IPv4, "mangle") {
		t.Fatalf("mangle rules without ObserveFirstACK:\n%s", rs.IPv4)
	}
}

func TestRulesReopenWithin(t *testing.T) {
	c := base("203.0.113.10:80")
	c.ReopenWithin, c.StaleMark = 120, DefaultStaleMark
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	const want = `*filter
:SYNGUARD-FORWARD - [0:0]
:SYNGUARD-STALE - [0:0]
-I FORWARD 1 -j SYNGUARD-FORWARD
-A SYNGUARD-FORWARD -m mark --mark 0x53470001 -j RETURN
-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,PSH,ACK ACK -m connmark --mark 0x53470002 -m conntrack --ctstate ESTABLISHED --ctexpire 0:120 -j SYNGUARD-STALE
-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 --tcp-flags FIN,SYN,RST,ACK SYN,ACK -m connmark --mark 0x53470002 -m conntrack --ctstate ESTABLISHED --ctexpire 0:120 -j SYNGUARD-STALE
-A SYNGUARD-FORWARD -m connmark --mark 0x53470002 -j RETURN
-A SYNGUARD-FORWARD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
-A SYNGUARD-FORWARD -s 203.0.113.10/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate INVALID,UNTRACKED -j NFQUEUE --queue-num 0
-A SYNGUARD-STALE -j MARK --set-xmark 0x53470003/0xffffffff
-A SYNGUARD-STALE -j NFQUEUE --queue-num 0
COMMIT
`
	_, filter, ok := strings.Cut(rs.IPv4, "COMMIT\n*filter\n")
	if !ok {
		t.Fatalf("no filter table:\n%s", rs.IPv4)
	}
	if diff := cmp.Diff(want, "*filter\n"+filter); diff != "" {
		t.Fatalf("filter rules (-want +got):\n%s", diff)
	}
	// Local mode: the client side's rule in INPUT, the service side's in
	// OUTPUT, each before that chain's hand-off RETURN.
	c.Local = true
	rs, _ = Rules(c)
	for _, want := range []string{
		"-A SYNGUARD-INPUT -m mark --mark 0x53470001 -j RETURN\n-A SYNGUARD-INPUT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,PSH,ACK ACK -m connmark --mark 0x53470002 -m conntrack --ctstate ESTABLISHED --ctexpire 0:120 -j SYNGUARD-STALE\n-A SYNGUARD-INPUT -m connmark --mark 0x53470002 -j RETURN\n",
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
