package bench

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/lab"
)

// Every rule the gateway gets is the same recipe in both families, with
// the family's tool, service address and spoofing range.
func TestFamilyRules(t *testing.T) {
	opt := BackendOptions{MSS: 1440, WindowScale: 10}
	for _, tt := range []struct {
		fam                 Family
		service             string
		tool, save, spoof   string
		conntrack, notFound string
	}{
		{IPv4, "203.0.113.2:80", "iptables", "iptables-save", "198.18.0.0/15", "-F -f ipv4", "2001:db8"},
		{IPv6, "[2001:db8:b::2]:80", "ip6tables", "ip6tables-save", "2001:db8:ff00::/40", "-F -f ipv6", "198.18."},
	} {
		t.Run(string(tt.fam), func(t *testing.T) {
			fam := familyNet(tt.fam)
			topo := &lab.Topology{BackendAddr: netip.MustParseAddr("203.0.113.2"), BackendAddr6: netip.MustParseAddr("2001:db8:b::2")}
			service := fam.service(topo)
			if service.String() != tt.service {
				t.Fatalf("service %v, want %s", service, tt.service)
			}
			if fam.iptables != tt.tool || fam.iptablesSave != tt.save {
				t.Errorf("tools %s, %s; want %s, %s", fam.iptables, fam.iptablesSave, tt.tool, tt.save)
			}
			if got := strings.Join(fam.conntrackFlush(), " "); got != tt.conntrack {
				t.Errorf("conntrack %q, want %q", got, tt.conntrack)
			}
			addr := service.Addr().String()

			base := baselineRules(nil, fam, service, KindSYN)
			want := [][]string{{"raw", "PREROUTING", "-s", tt.spoof, "-d", addr, "-p", "tcp", "--syn", "-j", "DROP"}}
			if base.iptables != tt.tool || !slices.EqualFunc(base.rules, want, slices.Equal) {
				t.Errorf("baseline: %s %q, want %s %q", base.iptables, base.rules, tt.tool, want)
			}
			// A forged-ACK flood's baseline drops segments with the ACK
			// flag alone.
			baseACK := baselineRules(nil, fam, service, KindACK)
			want = [][]string{{"raw", "PREROUTING", "-s", tt.spoof, "-d", addr, "-p", "tcp",
				"--tcp-flags", "SYN,ACK,RST,FIN", "ACK", "-j", "DROP"}}
			if baseACK.iptables != tt.tool || !slices.EqualFunc(baseACK.rules, want, slices.Equal) {
				t.Errorf("ACK baseline: %s %q, want %s %q", baseACK.iptables, baseACK.rules, tt.tool, want)
			}

			sp := synproxyRules(nil, fam, service, opt)
			match := []string{"-i", "to-client", "-p", "tcp", "-d", addr, "--dport", "80"}
			want = [][]string{
				append(append([]string{"raw", "PREROUTING"}, match...), "--syn", "-j", "CT", "--notrack"),
				append(append([]string{"filter", "FORWARD"}, match...), "-m", "conntrack", "--ctstate", "INVALID,UNTRACKED",
					"-j", "SYNPROXY", "--sack-perm", "--timestamp", "--wscale", "10", "--mss", "1440"),
				append(append([]string{"filter", "FORWARD"}, match...), "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"),
			}
			if sp.iptables != tt.tool || !slices.EqualFunc(sp.rules, want, slices.Equal) {
				t.Errorf("synproxy: %s %q, want %s %q", sp.iptables, sp.rules, tt.tool, want)
			}
			// The TCP sysctls are net.ipv4.* in both families: they
			// govern IPv6's TCP too.
			wantSysctls := [][2]string{{"net.netfilter.nf_conntrack_tcp_loose", "0"},
				{"net.ipv4.tcp_syncookies", "1"}, {"net.ipv4.tcp_timestamps", "1"}}
			if !slices.Equal(sp.sysctls, wantSysctls) {
				t.Errorf("synproxy sysctls %v, want %v", sp.sysctls, wantSysctls)
			}

			c := synackCounter(nil, fam)
			rule := c.rule()
			wantRule := []string{"PREROUTING", "-i", "eth0", "-d", tt.spoof, "-p", "tcp",
				"--tcp-flags", "SYN,ACK,RST,FIN", "SYN,ACK", "-m", "comment", "--comment", synackComment}
			if !slices.Equal(rule, wantRule) {
				t.Errorf("SYN-ACK counter %q, want %q", rule, wantRule)
			}
			rst := rstCounter(nil, fam).rule()
			wantRule = []string{"PREROUTING", "-i", "eth0", "-d", tt.spoof, "-p", "tcp",
				"--tcp-flags", "RST", "RST", "-m", "comment", "--comment", rstComment}
			if !slices.Equal(rst, wantRule) {
				t.Errorf("RST counter %q, want %q", rst, wantRule)
			}
			backend := backendACKCounter(nil, fam, service).rule()
			wantRule = []string{"PREROUTING", "-i", "eth0", "-s", tt.spoof, "-d", addr, "-p", "tcp", "--dport", "80",
				"--tcp-flags", "SYN,ACK,RST,FIN", "ACK", "-m", "comment", "--comment", backendACKComment}
			if !slices.Equal(backend, wantRule) {
				t.Errorf("backend ACK counter %q, want %q", backend, wantRule)
			}
			all := strings.Join(rule, " ") + " " + strings.Join(rst, " ") + " " + strings.Join(backend, " ")
			for _, r := range append(append(base.rules, baseACK.rules...), sp.rules...) {
				all += " " + strings.Join(r, " ")
			}
			if strings.Contains(all, tt.notFound) {
				t.Errorf("%s rules mention %s: %s", tt.fam, tt.notFound, all)
			}
		})
	}
}

func TestParseFamily(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		if got, err := ParseFamily(string(f)); err != nil || got != f {
			t.Errorf("ParseFamily(%q) = %q, %v", f, got, err)
		}
	}
	for _, bad := range []string{"", "IPv6", "inet6", "v6"} {
		if _, err := ParseFamily(bad); err == nil {
			t.Errorf("ParseFamily(%q) accepted", bad)
		}
	}
	if IPv4.String() != "IPv4" || IPv6.String() != "IPv6" {
		t.Errorf("names %s, %s", IPv4, IPv6)
	}
	cfg := Config{Name: "b", Binary: "/bin/true", Rates: []int{1000}, Duration: time.Second, ProbeRate: 1, OutDir: "/tmp/x"}
	for _, f := range []Family{"", IPv4, IPv6} {
		cfg.Family = f
		if err := cfg.Validate(); err != nil {
			t.Errorf("family %q: %v", f, err)
		}
	}
	cfg.Family = "ipx"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `"ipx"`) {
		t.Errorf("family ipx: %v", err)
	}
}

// report.json says which family a benchmark ran over, report.md says it
// in its header and fills the family's addresses into the baseline rule
// and the method; a report recorded before the field is IPv4.
func TestReportFamily(t *testing.T) {
	rep, err := LoadReport(recordedReport)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Family != IPv4 {
		t.Errorf("recorded report without a family read as %q", rep.Family)
	}
	for _, tt := range []struct {
		fam        Family
		want, not  []string
		jsonFamily string
	}{
		{IPv4, []string{"Address family: **IPv4** (service 203.0.113.2:80, flood from 198.18.0.0/15)",
			"`iptables -t raw -A PREROUTING -s 198.18.0.0/15", "`synguard run --protect 203.0.113.2:80 ", "IPv4 only"},
			[]string{"2001:db8", "ip6tables", "{service}", "{lab}"}, `"family": "ipv4"`},
		{IPv6, []string{"Address family: **IPv6** (service [2001:db8:b::2]:80, flood from 2001:db8:ff00::/40)",
			"`ip6tables -t raw -A PREROUTING -s 2001:db8:ff00::/40", "`synguard run --protect [2001:db8:b::2]:80 ",
			"toward 2001:db8:ff00::/40"},
			[]string{"198.18", "203.0.113", "IPv4 only", "{spoof}"}, `"family": "ipv6"`},
	} {
		t.Run(string(tt.fam), func(t *testing.T) {
			r := *rep
			r.Family = tt.fam
			dir := t.TempDir()
			if err := r.Write(dir); err != nil {
				t.Fatal(err)
			}
			md, err := os.ReadFile(filepath.Join(dir, ReportMD))
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !bytes.Contains(md, []byte(w)) {
					t.Errorf("report.md lacks %q", w)
				}
			}
			for _, n := range tt.not {
				if bytes.Contains(md, []byte(n)) {
					t.Errorf("report.md mentions %q", n)
				}
			}
			js, err := os.ReadFile(filepath.Join(dir, ReportJSON))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(js, []byte(tt.jsonFamily)) {
				t.Errorf("report.json lacks %s", tt.jsonFamily)
			}
			back, err := LoadReport(filepath.Join(dir, ReportJSON))
			if err != nil || back.Family != tt.fam {
				t.Errorf("read back: family %q, %v", back.Family, err)
			}
		})
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"family":"ipx","runs":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadReport(bad); err == nil || !strings.Contains(err.Error(), "ipx") {
		t.Errorf("unknown family: %v", err)
	}
}
