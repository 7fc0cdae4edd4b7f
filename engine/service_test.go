package engine

import (
	"net/netip"
	"testing"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

var server2 = netip.MustParseAddrPort("203.0.113.3:443")

func TestSourceLists(t *testing.T) {
	denied := netip.MustParseAddrPort("198.51.100.77:40000")
	allowed := netip.MustParseAddrPort("192.0.2.9:40000")
	h := newHarness(t, func(c *Config) {
		c.Services[0].Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.64/26")}
		c.Services[0].Deny = []netip.Prefix{netip.MustParsePrefix("198.51.100.77/32")}
	})
	// Deny wins over an allow prefix that also covers the source.
	h.handle(syn(denied, server, linuxOptions()), nf.Drop)
	h.expect(0)
	// Allowed: passed unchallenged, even in always mode.
	h.handle(syn(allowed, server, linuxOptions()), nf.Accept)
	h.expect(0)
	// Anyone else gets a cookie.
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	h.expect(1)
	for c, want := range map[Counter]uint64{SYNDenied: 1, SYNAllowed: 1, SYNReceived: 3, SYNACKSent: 1, SYNPassed: 0} {
		if got := h.stat(c); got != want {
			t.Errorf("%s = %d, want %d", c, got, want)
		}
	}
	// Lists are per service: the IPv6 service has none.
	if a, d := h.e.SourceLists(1); len(a)+len(d) != 0 {
		t.Error("the service without lists has some")
	}
	if a, d := h.e.SourceLists(0); len(a) != 2 || len(d) != 1 {
		t.Errorf("lists %v, %v do not follow the configuration", a, d)
	}
}

func TestSourceListsValidation(t *testing.T) {
	for name, sc := range map[string]ServiceConfig{
		"other family": {Addr: server, Allow: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		"invalid":      {Addr: server, Deny: []netip.Prefix{{}}},
		"too many":     {Addr: server, Deny: make([]netip.Prefix, MaxSourcePrefixes+1)},
		"bad mode":     {Addr: server, Mode: 7},
		"bad thresholds": {Addr: server, Thresholds: Thresholds{HalfOpenHigh: 10, HalfOpenLow: 20, SYNRateHigh: 1,
			Hold: 1, HandshakeTimeout: halfOpenTick}},
	} {
		if err := validateServices([]ServiceConfig{sc}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReconfigureKeepsWhatStays adds a service, removes one and changes
// the mode of the third, checking that a kept service keeps its counters,
// pending flow and learned options.
func TestReconfigureKeepsWhatStays(t *testing.T) {
	h := newHarness(t, nil)
	learned := BackendOptions{MSS: 1400, WindowScale: 5, SACKPermitted: true}
	h.e.LearnBackend(0, learned, "probe")
	// A flow pending on service 0 across the reload.
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq

	err := h.e.Reconfigure([]ServiceConfig{
		{Addr: server2, Mode: ModeAuto},
		{Addr: server, Mode: ModeAlways, Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	svcs := h.e.Services()
	if len(svcs) != 2 || svcs[0].Addr != server2 || svcs[1].Addr != server || svcs[1].Index != 0 || svcs[0].Index != 2 {
		t.Fatalf("services after reload = %+v, want server2 (new index 2), server (index 0)", svcs)
	}
	if got := h.stat(SYNACKSent); got != 1 {
		t.Errorf("kept service's synack_sent = %d after reload, want 1", got)
	}
	if got := h.e.Backend(0); got != learned {
		t.Errorf("kept service's options = %+v, want the learned %+v", got, learned)
	}
	// The handshake begun before the reload completes after it.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
	h.expect(1)
	if got := h.stat(CookieValid); got != 1 {
		t.Errorf("cookie_valid = %d, want 1: the pending handshake did not survive the reload", got)
	}
	// The removed IPv6 service no longer matches: its SYN is not ours.
	h.handle(syn(client6, server6, linuxOptions()), nf.Accept)
	h.expect(0)
	if s := h.e.Stats(1); s.Get(SYNReceived) != 0 {
		t.Error("a removed service still counts SYNs")
	}
	// The new service starts in auto's passthrough.
	h.handle(syn(client, server2, linuxOptions()), nf.Accept)
	if h.e.ServiceState(2) != StatePassthrough || h.e.ServiceMode(2) != ModeAuto {
		t.Error("the added auto service does not start in passthrough")
	}

	// Back again: the IPv6 service returns to its old index.
	if err := h.e.Reconfigure([]ServiceConfig{{Addr: server6}}); err != nil {
		t.Fatal(err)
	}
	if svcs := h.e.Services(); len(svcs) != 1 || svcs[0].Index != 1 {
		t.Fatalf("services = %+v, want server6 back at index 1", svcs)
	}
}

func TestReconfigureModes(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	set := func(m Mode) {
		t.Helper()
		if err := h.e.Reconfigure([]ServiceConfig{{Addr: server, Mode: m, Thresholds: testThresholds}}); err != nil {
			t.Fatal(err)
		}
	}
	set(ModeAlways)
	if h.e.ServiceState(0) != StateCookie {
		t.Fatal("switching to always did not answer with cookies")
	}
	// Back to auto: the service stays in cookie mode until the controller,
	// starting from that state, sees the hold time pass quietly.
	set(ModeAuto)
	h.e.control(h.clock.now())
	if h.e.ServiceState(0) != StateCookie {
		t.Fatal("switching to auto dropped cookie mode at once")
	}
	for range 2 * int(testThresholds.Hold/controlTick) {
		h.clock.advance(controlTick)
		h.e.control(h.clock.now())
	}
	if h.e.ServiceState(0) != StatePassthrough {
		t.Fatal("auto never returned to passthrough after the hold time")
	}
	set(ModeOff)
	h.handle(syn(client, server, linuxOptions()), nf.Accept)
	if h.e.ServiceState(0) != StatePassthrough {
		t.Fatal("off mode is not passthrough")
	}
}

func TestReconfigureRejectsAndKeeps(t *testing.T) {
	h := newHarness(t, nil)
	before := h.e.Services()
	for name, svcs := range map[string][]ServiceConfig{
		"empty":     nil,
		"duplicate": {{Addr: server}, {Addr: server}},
		"bad":       {{Addr: server, Allow: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}}},
	} {
		if err := h.e.Reconfigure(svcs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if after := h.e.Services(); len(after) != len(before) || after[0] != before[0] || after[1] != before[1] {
		t.Errorf("a rejected reload changed the services: %+v, was %+v", after, before)
	}
	// Slots are never reused for another address, so their count is
	// bounded over the engine's life.
	var many []ServiceConfig
	for i := range MaxServices {
		many = append(many, ServiceConfig{Addr: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(i+1))})
	}
	if err := h.e.Reconfigure(many); err == nil {
		t.Error("more services than MaxServices over the engine's life: accepted")
	}
}

func TestReconfigureBackendOverride(t *testing.T) {
	h := newHarness(t, nil)
	fixed := BackendOptions{MSS: 1200, WindowScale: 2}
	if err := h.e.Reconfigure([]ServiceConfig{{Addr: server, Backend: &fixed}}); err != nil {
		t.Fatal(err)
	}
	h.e.LearnBackend(0, BackendOptions{MSS: 1460, WindowScale: 7}, "probe")
	if got := h.e.Backend(0); got != fixed || !h.e.BackendFixed(0) {
		t.Fatalf("fixed options = %+v, want %+v, not learned over", got, fixed)
	}
	if err := h.e.Reconfigure([]ServiceConfig{{Addr: server}}); err != nil {
		t.Fatal(err)
	}
	learned := BackendOptions{MSS: 1460, WindowScale: 7, SACKPermitted: true}
	h.e.LearnBackend(0, learned, "probe")
	if got := h.e.Backend(0); got != learned || h.e.BackendFixed(0) {
		t.Fatalf("after the override went: %+v, want learned %+v", got, learned)
	}
}
