package gateway

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/internal/nstest"
)

func TestServiceChanges(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.10:80")
	b := netip.MustParseAddrPort("192.0.2.11:443")
	c := netip.MustParseAddrPort("[2001:db8::1]:80")
	th := engine.DefaultThresholds
	th2 := th
	th2.HalfOpenHigh, th2.Hold = 512, 30*time.Second
	old := []engine.ServiceConfig{
		{Addr: a, Mode: engine.ModeAuto, Thresholds: th},
		{Addr: b, Mode: engine.ModeAlways, Thresholds: th},
	}
	next := []engine.ServiceConfig{
		{Addr: a, Mode: engine.ModeAlways, Thresholds: th2, Deny: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
			Backend: &engine.BackendOptions{MSS: 1400, WindowScale: 7}},
		{Addr: c, Mode: engine.ModeAuto, Thresholds: th},
	}
	want := []string{
		"192.0.2.10:80: mode auto -> always",
		"192.0.2.10:80: half_open_high 128 -> 512",
		"192.0.2.10:80: hold 10s -> 30s",
		"192.0.2.10:80: backend learned -> mss=1400,wscale=7,sack=false",
		"192.0.2.10:80: deny [] -> [198.51.100.0/24]",
		"added [2001:db8::1]:80",
		"removed 192.0.2.11:443",
	}
	if diff := cmp.Diff(want, serviceChanges(old, next)); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if got := serviceChanges(old, old); len(got) != 0 {
		t.Errorf("no change reported as %q", got)
	}
}

// TestReloadAppliesAndRejects reloads a running gateway: a service
// added with its rules, then a reload that would need a restart, which
// changes nothing.
func TestReloadAppliesAndRejects(t *testing.T) {
	ns := nstest.New(t, "sggw-reload")
	ctx, cancel := context.WithCancel(context.Background())
	cfg := lifecycleConfig()
	added := netip.MustParseAddrPort("192.0.2.11:443")
	serveErr, _ := serveIn(t, ns, ctx, cfg, func(g *gateway) {
		defer cancel()
		next := lifecycleConfig()
		next.Services = append(next.Services, engine.ServiceConfig{Addr: added, Mode: engine.ModeAuto})
		changes, err := g.apply(ctx, next)
		if err != nil {
			t.Errorf("reload: %v", err)
			return
		}
		if !slices.Equal(changes, []string{"added " + added.String()}) {
			t.Errorf("changes = %q", changes)
		}
		rules := iptablesSave(t, ns)
		if !strings.Contains(rules, "-d 192.0.2.11/32 -p tcp -m tcp --dport 443") {
			t.Errorf("no rule for the added service:\n%s", rules)
		}
		if svcs := g.eng.Services(); len(svcs) != 2 || svcs[1].Addr != added || svcs[1].Mode != engine.ModeAuto {
			t.Errorf("engine services after reload: %+v", svcs)
		}

		// A reload keeps what only a restart can change, whatever it
		// is given: the command refuses such files before.
		keep := next
		keep.Queue = 99
		if _, err := g.apply(ctx, keep); err != nil {
			t.Errorf("reload: %v", err)
		}
		if g.cfg.Queue != cfg.Queue {
			t.Errorf("a reload changed the queue to %d", g.cfg.Queue)
		}
		// An invalid one changes nothing.
		bad := next
		bad.Services = append(bad.Services, bad.Services[0])
		if _, err := g.apply(ctx, bad); err == nil {
			t.Error("a reload listing a service twice was applied")
		}
		if after := iptablesSave(t, ns); stripComments(after) != stripComments(rules) {
			t.Errorf("a rejected reload changed the rules:\n%s\nwas\n%s", after, rules)
		}
		if svcs := g.eng.Services(); len(svcs) != 2 {
			t.Errorf("a rejected reload changed the engine's services: %+v", svcs)
		}
	})
	if serveErr != nil {
		t.Fatal(serveErr)
	}
}

// stripComments drops iptables-save's dated comment lines.
func stripComments(rules string) string {
	var b strings.Builder
	for l := range strings.Lines(rules) {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}
