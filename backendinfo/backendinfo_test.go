package backendinfo_test

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/backendinfo"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/lab/netns"
)

var (
	clientAddr4  = netip.MustParseAddr("198.51.100.2")
	backendAddr4 = netip.MustParseAddr("198.51.100.1")
	clientAddr6  = netip.MustParseAddr("2001:db8:c::2")
	backendAddr6 = netip.MustParseAddr("2001:db8:c::1")
)

// mtu is the veth pair's MTU (nstest.Pair's, the kernel's default for veth).
const mtu = 1500

// newPair makes a client and a backend namespace joined by a veth pair
// (eth0 in each, MTU 1500), removed when the test ends.
func newPair(t *testing.T) (client, backend *netns.NS) {
	t.Helper()
	return nstest.Pair(t, "sgbi", nstest.Addrs{V4: clientAddr4, V6: clientAddr6}, nstest.Addrs{V4: backendAddr4, V6: backendAddr6})
}

// setSysctls writes /proc/sys entries (key with dots) inside ns.
func setSysctls(t *testing.T, ns *netns.NS, kv map[string]string) {
	t.Helper()
	err := ns.Do(func() error {
		for k, v := range kv {
			path := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(path, []byte(v+"\n"), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// accepted is what the backend's own socket says about a connection: the
// ground truth Probe must learn.
type accepted struct {
	wscale int8   // the scale the backend announced, -1 for none
	mss    uint32 // the MSS the backend announced
	sack   bool
}

// listen serves on addr inside ns and reports, for each connection, the
// accepted socket's view from TCP_INFO.
func listen(t *testing.T, ns *netns.NS, addr netip.AddrPort) <-chan accepted {
	t.Helper()
	ln := nstest.Listen(t, ns, addr.String())
	out := make(chan accepted, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			raw, _ := c.(*net.TCPConn).SyscallConn()
			var info *unix.TCPInfo
			_ = raw.Control(func(fd uintptr) {
				info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			})
			c.Close()
			if err != nil {
				continue
			}
			// struct tcp_info: tcpi_snd_wscale:4, tcpi_rcv_wscale:4 in the
			// byte after tcpi_options. rcv_wscale is what this side
			// announced. tcpi_options: bit 1 timestamps, 2 SACK, 4 window
			// scaling. With timestamps on, the kernel takes their 12 bytes
			// off tcpi_advmss after the handshake.
			b := (*[8]byte)(unsafe.Pointer(info))
			a := accepted{wscale: -1, mss: info.Advmss, sack: info.Options&2 != 0}
			if info.Options&1 != 0 {
				a.mss += 12
			}
			if info.Options&4 != 0 {
				a.wscale = int8(b[6] >> 4)
			}
			out <- a
		}
	}()
	return out
}

// probeFrom runs Probe with its socket inside ns.
func probeFrom(ns *netns.NS, backend netip.AddrPort, mark uint32, timeout time.Duration) (o backendinfo.Options, err error) {
	derr := ns.Do(func() error {
		o, err = backendinfo.Probe(context.Background(), backend, mark, timeout)
		return nil
	})
	return o, errors.Join(derr, err)
}

// hostRmemMax reads net.core.rmem_max, which the kernel keeps host-wide
// (it is not per namespace).
func hostRmemMax(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// kernelWindowScale is the scale Linux announces for a listener without
// SO_RCVBUF (tcp_select_initial_window): enough to express the largest
// receive buffer it may grow to, max(tcp_rmem[2], net.core.rmem_max), in
// 16 bits, at most 14.
func kernelWindowScale(rmemMax, coreRmemMax int) int8 {
	space := max(rmemMax, coreRmemMax)
	log2 := bits.Len(uint(space)) - 1
	return int8(min(max(log2-15, 0), 14))
}

// TestProbeLearnsBackendOptions: Probe reports what the backend announced,
// as the backend's own accepted socket knows it, for both families and
// with each option turned off on the backend.
func TestProbeLearnsBackendOptions(t *testing.T) {
	client, backend := newPair(t)
	coreRmemMax := hostRmemMax(t)
	tests := []struct {
		name      string
		v6        bool
		rmemMax   int
		sack      bool
		wscale    bool
		tstamps   bool
		wantMSS   uint16
		wantScale bool // the kernel rule applies (window scaling on)
	}{
		{"IPv4 6MiB", false, 6 << 20, true, true, true, mtu - 40, true},
		{"IPv6 6MiB", true, 6 << 20, true, true, true, mtu - 60, true},
		{"IPv4 32MiB", false, 32 << 20, true, true, true, mtu - 40, true},
		{"IPv6 64MiB", true, 64 << 20, true, true, true, mtu - 60, true},
		{"IPv4 SACK off", false, 6 << 20, false, true, true, mtu - 40, true},
		{"IPv6 SACK off", true, 6 << 20, false, true, true, mtu - 60, true},
		{"IPv4 window scaling off", false, 6 << 20, true, false, true, mtu - 40, false},
		{"IPv6 window scaling off", true, 6 << 20, true, false, true, mtu - 60, false},
		{"IPv4 timestamps off", false, 6 << 20, true, true, false, mtu - 40, true},
	}
	port := uint16(8000)
	scales := map[int8]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onOff := map[bool]string{false: "0", true: "1"}
			setSysctls(t, backend, map[string]string{
				"net.ipv4.tcp_rmem":           fmt.Sprintf("4096 131072 %d", tt.rmemMax),
				"net.ipv4.tcp_sack":           onOff[tt.sack],
				"net.ipv4.tcp_window_scaling": onOff[tt.wscale],
				"net.ipv4.tcp_timestamps":     onOff[tt.tstamps],
			})
			port++
			addr := netip.AddrPortFrom(backendAddr4, port)
			if tt.v6 {
				addr = netip.AddrPortFrom(backendAddr6, port)
			}
			truth := listen(t, backend, addr)
			got, err := probeFrom(client, addr, 0, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var want accepted
			select {
			case want = <-truth:
			case <-time.After(3 * time.Second):
				t.Fatal("backend accepted no connection")
			}
			t.Logf("probe %+v; backend's socket: scale %d, mss %d, sack %v", got, want.wscale, want.mss, want.sack)

			if got.WindowScale != want.wscale {
				t.Errorf("window scale %d, backend announced %d", got.WindowScale, want.wscale)
			}
			rule := int8(-1)
			if tt.wantScale {
				rule = kernelWindowScale(tt.rmemMax, coreRmemMax)
			}
			if got.WindowScale != rule {
				t.Errorf("window scale %d, the kernel's rule gives %d for tcp_rmem max %d, rmem_max %d", got.WindowScale, rule, tt.rmemMax, coreRmemMax)
			}
			scales[got.WindowScale] = true
			if got.SACKPermitted != tt.sack || got.SACKPermitted != want.sack {
				t.Errorf("SACK %v, backend has it %v (sysctl %v)", got.SACKPermitted, want.sack, tt.sack)
			}
			if got.MSS != tt.wantMSS || uint32(got.MSS) != want.mss {
				t.Errorf("MSS %d, want %d (MTU %d; backend announced %d)", got.MSS, tt.wantMSS, mtu, want.mss)
			}
		})
	}
	// The rmem cases must really have told the backends apart.
	if len(scales) < 3 {
		t.Errorf("only window scales %v seen; the cases do not discriminate", scales)
	}
}

// TestProbeUnreachable: a backend that refuses fails at once, and a silent
// one fails when the timeout expires, not later; both errors name it.
func TestProbeUnreachable(t *testing.T) {
	client, backend := newPair(t)

	refused := netip.AddrPortFrom(backendAddr6, 9) // nothing listens
	start := time.Now()
	_, err := probeFrom(client, refused, 0, 3*time.Second)
	if err == nil || !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), refused.String()) {
		t.Fatalf("probe of a closed port: %v, want connection refused naming %s", err, refused)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("refusal took %v; it should not wait for the 3s timeout", d)
	}

	// The backend drops SYNs to this port without a word.
	silent := netip.AddrPortFrom(backendAddr4, 8080)
	if err := backend.Run(context.Background(), "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	listen(t, backend, silent)
	const timeout = 500 * time.Millisecond
	start = time.Now()
	_, err = probeFrom(client, silent, 0, timeout)
	d := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), silent.String()) {
		t.Fatalf("probe of a silent backend: %v, want an error naming %s", err, silent)
	}
	// Generous slack above: the machine may be busy; the point is that
	// the probe does not hang on the kernel's own SYN retries (over a
	// minute).
	if d < timeout*9/10 || d > timeout+2*time.Second {
		t.Errorf("silent backend: error after %v, want about the %v timeout", d, timeout)
	}
}

// TestProbeMark: a non-zero mark is set on the probe's packets (so a
// probe to a local backend passes synguard's own rules untouched), and no
// mark is set when none is asked for.
func TestProbeMark(t *testing.T) {
	client, backend := newPair(t)
	const mark = 0x53470001
	if err := client.Run(context.Background(), "iptables", "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--syn",
		"-m", "mark", "--mark", fmt.Sprintf("%#x", mark)); err != nil {
		t.Fatal(err)
	}
	counted := func() int {
		t.Helper()
		out, err := client.Output(context.Background(), "iptables-save", "-c", "-t", "raw")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^\[(\d+):\d+\] -A OUTPUT .*--mark 0x53470001`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter rule:\n%s", out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	addr := netip.AddrPortFrom(backendAddr4, 8000)
	listen(t, backend, addr)
	for _, tc := range []struct {
		mark uint32
		want int
	}{{0, 0}, {mark, 1}} {
		before := counted()
		if _, err := probeFrom(client, addr, tc.mark, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := counted() - before; n != tc.want {
			t.Errorf("probe with mark %#x: %d marked SYNs, want %d", tc.mark, n, tc.want)
		}
	}
}
