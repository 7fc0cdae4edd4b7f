package xdp

import (
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/packet"
)

func TestSourceLists(t *testing.T) { forKinds(t, testSourceLists) }

func testSourceLists(t *testing.T, h *harness) {
	allow := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("192.0.2.0/25")}
	deny := []netip.Prefix{netip.MustParsePrefix("198.51.100.77/32"), netip.MustParsePrefix("198.18.0.0/15")}
	if err := h.p.SetSourceLists(0, allow, deny); err != nil {
		t.Fatal(err)
	}
	if err := h.p.SetService(0, Service{Addr: service4, Mode: Cookie, Lists: true, MSS: backend.MSS, WindowScale: backend.WindowScale, SACKPermitted: true}); err != nil {
		t.Fatal(err)
	}
	syn := func(src string) []byte {
		return ether(rawSegment(netip.MustParseAddrPort(src), service4, 7, 0, packet.SYN, linuxOpts(1460, 7), nil))
	}
	before, _ := h.p.Counters(0)
	for _, c := range []struct {
		src  string
		want verdict
	}{
		{"198.51.100.9:40000", vPass},  // allowed: to the engine, which lets it through
		{"198.51.100.77:40000", vDrop}, // denied inside an allowed /24: deny wins
		{"198.18.3.4:40000", vDrop},    // denied
		{"192.0.2.200:40000", vTX},     // outside the allowed /25: challenged
		{"203.0.113.99:40000", vTX},    // on no list
	} {
		if got, _ := h.run(syn(c.src)); got != c.want {
			t.Errorf("SYN from %s: %v, want %v", c.src, got, c.want)
		}
	}
	after, _ := h.p.Counters(0)
	if d := after.SYNDenied - before.SYNDenied; d != 2 {
		t.Errorf("%d SYNs counted denied, want 2", d)
	}
	// The lists are replaced, not added to.
	if err := h.p.SetSourceLists(0, nil, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]verdict{"198.18.3.4:40000": vTX, "198.51.100.9:40000": vTX, "203.0.113.99:40000": vDrop} {
		if got, _ := h.run(syn(src)); got != want {
			t.Errorf("after the lists changed, SYN from %s: %v, want %v", src, got, want)
		}
	}
	// Another service's lists are its own.
	if got, _ := h.run(ether(rawSegment(netip.MustParseAddrPort("[2001:db8:ff00::1]:40000"), service6, 7, 0, packet.SYN, linuxOpts(1440, 7), nil))); got != vTX {
		t.Errorf("SYN to a service without lists: %v, want tx", got)
	}
	if err := h.p.SetSourceLists(0, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// onOneCPU keeps the calling goroutine on its thread, and the thread on
// one of the CPUs it may use, until the test ends.
func onOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var was, one unix.CPUSet
	err := unix.SchedGetaffinity(0, &was)
	if err == nil {
		cpu := 0
		for !was.IsSet(cpu) {
			cpu++
		}
		one.Set(cpu)
		err = unix.SchedSetaffinity(0, &one)
	}
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("pinning the test to one CPU: %v", err)
	}
	t.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &was)
		runtime.UnlockOSThread()
	})
}
