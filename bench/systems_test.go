package bench

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The systems in report order, synguard-nfqueue among them, and which of
// them are synguard.
func TestParseSystem(t *testing.T) {
	if want := []System{"synguard", "synguard-nfqueue", "synproxy", "none"}; !slices.Equal(AllSystems, want) {
		t.Errorf("AllSystems %v, want %v", AllSystems, want)
	}
	for _, sys := range AllSystems {
		got, err := ParseSystem(string(sys))
		if err != nil || got != sys {
			t.Errorf("ParseSystem(%q) = %q, %v", sys, got, err)
		}
		if want := sys == Synguard || sys == SynguardNFQueue; sys.IsSynguard() != want {
			t.Errorf("%s.IsSynguard() = %v", sys, sys.IsSynguard())
		}
	}
	for _, bad := range []string{"", "Synguard", "synguard-xdp", "nfqueue", "synguard_nfqueue", "synguard-nfqueue "} {
		if _, err := ParseSystem(bad); err == nil || !strings.Contains(err.Error(), "synguard-nfqueue") {
			t.Errorf("ParseSystem(%q): %v, want an error naming the systems", bad, err)
		}
	}
}

// synguard runs with its defaults (XDP auto), synguard-nfqueue with --xdp
// off; the user's arguments follow the benchmark's, without their XDP
// flags for synguard-nfqueue.
func TestSynguardRunArgs(t *testing.T) {
	service := netip.MustParseAddrPort("203.0.113.2:80")
	base := "run --protect 203.0.113.2:80 --mode always --queues 2 --metrics 127.0.0.1:9847 --log-level warn"
	for _, tt := range []struct {
		xdpOff bool
		args   []string
		want   string
	}{
		{false, nil, base},
		{true, nil, base + " --xdp off"},
		{false, []string{"--reply-path", "route", "--xdp", "native"}, base + " --reply-path route --xdp native"},
		{true, []string{"--reply-path", "route", "--xdp", "native"}, base + " --reply-path route --xdp off"},
		{true, []string{"--xdp=generic", "-xdp-interfaces", "to-client", "--fail", "open", "--xdp-interfaces=a,b", "-xdp", "auto"},
			base + " --fail open --xdp off"},
	} {
		s := &synguardSetup{service: service, queues: 2, xdpOff: tt.xdpOff, args: tt.args}
		if got := strings.Join(s.runArgs(), " "); got != tt.want {
			t.Errorf("xdp off %v, args %q:\n got %s\nwant %s", tt.xdpOff, tt.args, got, tt.want)
		}
	}
}

// The path of a synguard run comes from its fast path's verdicts: SYN-ACKs
// sent for a SYN flood, drops for a forged-ACK flood; the hook from its
// links.
func TestRunPath(t *testing.T) {
	for _, tt := range []struct {
		attack   Kind
		tx, drop uint64
		fast     string
		want     string
	}{
		{KindSYN, 100_000, 0, PathXDP, PathXDP},
		{KindSYN, 100_000, 0, PathTC, PathTC},
		{"", 1, 0, PathXDP, PathXDP},
		{KindSYN, 0, 0, PathTC, PathNFQueue},
		{KindSYN, 0, 5, PathXDP, PathNFQueue}, // drops alone do not answer SYNs
		{KindACK, 0, 100_000, PathXDP, PathXDP},
		{KindACK, 0, 100_000, PathTC, PathTC},
		{KindACK, 200, 0, PathTC, PathNFQueue}, // the legitimate clients' SYNs, not the flood
		{KindACK, 0, 0, PathXDP, PathNFQueue},
	} {
		if got := runPath(tt.attack, tt.tx, tt.drop, tt.fast); got != tt.want {
			t.Errorf("runPath(%q, tx %d, drop %d, %s) = %q, want %q", tt.attack, tt.tx, tt.drop, tt.fast, got, tt.want)
		}
	}
}

// The fast path's hook comes from the kinds of BPF links synguard holds.
func TestFastPath(t *testing.T) {
	for _, tt := range []struct {
		types map[string]int
		want  string
	}{
		{map[string]int{"tcx": 2}, PathTC},
		{map[string]int{"xdp": 2}, PathXDP},
		{map[string]int{"xdp": 1, "tcx": 1}, PathXDP},
		{map[string]int{}, PathXDP},
	} {
		if got := fastPath(tt.types); got != tt.want {
			t.Errorf("fastPath(%v) = %q, want %q", tt.types, got, tt.want)
		}
	}
	const info = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t26\nlink_type:\ttcx\nlink_id:\t90\nprog_tag:\t5c673726c9a30103\nprog_id:\t285\nifindex:\t1\nattach_type:\t46 (ingress)\n"
	if got := fdinfoLinkType(info); got != "tcx" {
		t.Errorf("fdinfoLinkType = %q, want tcx", got)
	}
}

// A metric's series by one label, wherever the label stands among the
// others.
func TestPerLabel(t *testing.T) {
	text := `# TYPE synguard_xdp_packets_total counter
synguard_xdp_packets_total{action="drop"} 12
synguard_xdp_packets_total{action="pass"} 3.5e+02
synguard_xdp_packets_total{action="tx"} 100000
synguard_xdp_packets_totals{action="tx"} 7
synguard_xdp_synack_sent_total{service="203.0.113.2:80"} 100000
synguard_xdp_ack_dropped_total{queue="0",service="[2001:db8:b::2]:80"} 4
synguard_xdp_ack_dropped_total{queue="1",service="[2001:db8:b::2]:80"} 5
synguard_xdp_ack_dropped_total{queue="1"} 9
`
	got, err := perLabel(text, "synguard_xdp_packets_total", "action")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]float64{"drop": 12, "pass": 350, "tx": 100000}; !maps.Equal(got, want) {
		t.Errorf("actions %v, want %v", got, want)
	}
	got, err = perLabel(text, "synguard_xdp_ack_dropped_total", "service")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]float64{"[2001:db8:b::2]:80": 9}; !maps.Equal(got, want) {
		t.Errorf("by service %v, want %v", got, want)
	}
	// No such metric: nothing, no error (synguard-nfqueue has no XDP).
	if got, err := perLabel(text, "synguard_nothing_total", "action"); err != nil || len(got) != 0 {
		t.Errorf("absent metric: %v, %v", got, err)
	}
	if _, err := perLabel(`synguard_xdp_packets_total{action="tx"} lots`, "synguard_xdp_packets_total", "action"); err == nil {
		t.Error("a bad value accepted")
	}
}
