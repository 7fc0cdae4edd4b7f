package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/xdp"
)

// xdpActions reads synguard_xdp_packets_total by action.
func (g *gateway) xdpActions() map[string]float64 {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	text, err := lab.ScrapeMetricsText(ctx, g.ns, metricsAddr)
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	out := make(map[string]float64)
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, `synguard_xdp_packets_total{action="`)
		if !ok {
			continue
		}
		action, value, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			g.t.Fatalf("bad metric line %q", line)
		}
		out[action] = v
	}
	return out
}

// xdpOnLink reports whether link name in ns carries an XDP program.
func xdpOnLink(t *testing.T, ns *netns.NS, name string) bool {
	t.Helper()
	out, err := ns.Output(context.Background(), "ip", "-d", "link", "show", "dev", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, "prog/xdp")
}

// bpfLinks returns the BPF links process pid holds, by link ID, with their
// type as /proc/PID/fdinfo names it ("xdp", "tcx").
func bpfLinks(t testing.TB, pid int) map[link.ID]string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[link.ID]string)
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); target != "anon_inode:bpf_link" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var typ string
		var id uint64
		for line := range strings.Lines(string(info)) {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			switch k {
			case "link_type":
				typ = strings.TrimSpace(v)
			case "link_id":
				id, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			}
		}
		out[link.ID(id)] = typ
	}
	return out
}

// tcLinks returns the IDs of the tcx links the gateway holds on link name
// in ns; it fails the test on links of any other kind.
func tcLinks(t *testing.T, g *gateway, ns *netns.NS, name string) []link.ID {
	t.Helper()
	var ifindex int
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			ifindex = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var ids []link.ID
	for id, typ := range bpfLinks(t, g.cmd.Process.Pid) {
		if typ != "tcx" {
			t.Fatalf("gateway holds a %s link, want tcx links only", typ)
		}
		l, err := link.NewFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if tcx := info.TCX(); tcx != nil && int(tcx.Ifindex) == ifindex && ebpf.AttachType(tcx.AttachType) == ebpf.AttachTCXIngress {
			ids = append(ids, id)
		}
	}
	return ids
}

// linkGone reports whether the kernel no longer has link id.
func linkGone(id link.ID) bool {
	l, err := link.NewFromID(id)
	if err == nil {
		l.Close()
		return false
	}
	return errors.Is(err, os.ErrNotExist)
}

// peerProgram puts an XDP program that passes everything on the client's
// end of the veth, natively (on veth, frames a native XDP program sends
// with XDP_TX reach the peer only when the peer runs one), and returns
// its detach.
func peerProgram(tb testing.TB, topo *lab.Topology) (detach func()) {
	tb.Helper()
	var p *xdp.Program
	if err := topo.Client.Do(func() (err error) {
		if p, err = xdp.Load(); err != nil {
			return err
		}
		_, err = p.Attach(topo.ClientSide, xdp.ModeNative)
		return err
	}); err != nil {
		if p != nil {
			p.Close()
		}
		tb.Fatal(err)
	}
	return func() { p.Close() }
}

// TestXDPAnswersFloodAtTheDriver: with the fast path on the client's link
// (generic XDP, native XDP with a program on the peer, and tc), a spoofed
// SYN flood is answered at the link: the queue stays flat while the
// flood's SYNs are answered, none reaches the backend, and real clients
// and a download get through intact. For each address family.
func TestXDPAnswersFloodAtTheDriver(t *testing.T) {
	for _, mode := range []string{"generic", "native", "tc"} {
		for _, family := range []string{"IPv4", "IPv6"} {
			t.Run(mode+"/"+family, func(t *testing.T) {
				topo := newLab(t, lab.Config{})
				service, client := netip.AddrPortFrom(topo.BackendAddr, 80), topo.ClientAddr
				if family == "IPv6" {
					service, client = netip.AddrPortFrom(topo.BackendAddr6, 80), topo.ClientAddr6
				}
				if mode == "native" {
					t.Cleanup(peerProgram(t, topo))
				}
				serve(t, topo.Backend, service)
				syns := watchSYNs(t, topo)
				g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always",
					"--xdp", mode, "--xdp-interfaces", topo.GatewayClientSide)
				g.waitStarted()
				if want := fmt.Sprintf(`"xdp":{%q:%q}`, topo.GatewayClientSide, mode); !strings.Contains(g.log.String(), want) {
					t.Fatalf("start event does not name the link's XDP mode (%s):\n%s", want, g.log.String())
				}
				// The fast path answers once the engine has renewed it.
				poll.Must(t, 5*time.Second, "the fast path never answered a SYN", func() bool {
					lab.Probe(context.Background(), topo.Client, service, time.Second)
					return g.xdpActions()["tx"] > 0
				})
				queued := g.metric("synguard_queue_received_total")
				settleSYNs(t, topo, syns)
				replayed := syns.From(client) // the readiness probes'

				const rate, seconds = 20000, 5
				wait := flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
				download(t, topo.Client, service, 32*mib, nil)
				const probes = 20
				for i := range probes {
					if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
						t.Fatalf("legitimate client %d failed during the flood: %v", i, r.Err)
					}
				}
				sent := floodSent(t, wait())
				g.waitIdle()
				settleSYNs(t, topo, syns)

				acts := g.xdpActions()
				m, err := g.metrics()
				if err != nil {
					t.Fatal(err)
				}
				crossed := m["synguard_queue_received_total"] - queued
				t.Logf("flood %d SYNs; XDP tx %v drop %v pass %v; queue received %v during the flood; SYN-ACKs %v (XDP %v); backend: %d SYNs, %d spoofed",
					sent, acts["tx"], acts["drop"], acts["pass"], crossed, m["synguard_synack_sent_total"], m["synguard_xdp_synack_sent_total"], syns.Total(), syns.Spoofed())
				if n := syns.Spoofed(); n != 0 {
					t.Fatalf("backend received %d SYNs from spoofed sources", n)
				}
				if acts["tx"] < float64(sent)*0.99 {
					t.Fatalf("the fast path answered %v of %d flood SYNs", acts["tx"], sent)
				}
				// Each legitimate connection crosses the queue twice (its
				// cookie ACK, the backend's SYN-ACK) and its close once or
				// twice; on a loaded machine a slow hand-off adds the
				// client's retransmitted ACK or zero-window probes. The
				// flood (100,000 SYNs) not at all.
				if limit := float64(8 * (probes + 1)); crossed > limit {
					t.Fatalf("%v packets crossed the queue during the flood; legitimate traffic accounts for %v at most", crossed, limit)
				}
				if m["synguard_synack_sent_total"] < acts["tx"] {
					t.Fatalf("synguard_synack_sent_total %v does not include the fast path's %v", m["synguard_synack_sent_total"], acts["tx"])
				}
				if got := syns.From(client) - replayed; got != probes+1 {
					t.Fatalf("backend saw %d replayed SYNs from the client during the flood, want %d", got, probes+1)
				}
			})
		}
	}
}

// TestXDPDropsForgedACKs: forged ACKs toward a protected service are
// dropped at the link and counted; none crosses the queue, and a real
// client still gets through. With --xdp auto, which on veth is tc, and with
// generic XDP.
func TestXDPDropsForgedACKs(t *testing.T) {
	for _, tt := range []struct{ mode, want string }{{"auto", "tc"}, {"generic", "generic"}} {
		t.Run(tt.mode, func(t *testing.T) {
			topo := newLab(t, lab.Config{DisableIPv6: true})
			service := netip.AddrPortFrom(topo.BackendAddr, 80)
			serve(t, topo.Backend, service)
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always",
				"--xdp", tt.mode, "--xdp-interfaces", topo.GatewayClientSide)
			g.waitStarted()
			if want := fmt.Sprintf(`"xdp":{%q:%q}`, topo.GatewayClientSide, tt.want); !strings.Contains(g.log.String(), want) {
				t.Fatalf("--xdp %s: start event does not name the link's mode (%s):\n%s", tt.mode, want, g.log.String())
			}
			poll.Must(t, 5*time.Second, "the fast path never answered a SYN", func() bool {
				lab.Probe(context.Background(), topo.Client, service, time.Second)
				return g.xdpActions()["tx"] > 0
			})
			queued := g.metric("synguard_queue_received_total")
			dropped := g.xdpActions()["drop"]

			const count = 200_000
			st, err := forgeACKs(topo.Client, service, count, ackFloodRate, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
				t.Fatalf("legitimate client failed after the forged ACKs: %v", r.Err)
			}
			g.waitIdle()
			m, err := g.metrics()
			if err != nil {
				t.Fatal(err)
			}
			acts := g.xdpActions()
			crossed := m["synguard_queue_received_total"] - queued
			t.Logf("sent %d forged ACKs; dropped %v at the link; queue received %v; cookie_invalid %v",
				st.Sent, acts["drop"]-dropped, crossed, m["synguard_cookie_invalid_total"])
			if st.Sent < count {
				t.Fatalf("only %d of %d ACKs sent", st.Sent, count)
			}
			// A random ACK carries a valid cookie with a chance of 2^-23
			// (a 24-bit MAC, checked for two ISNs): 0.024 of 200,000 on
			// average. Such an ACK is a valid handshake's to the program
			// and passes; more than maxLucky would be a hole.
			const maxLucky = 3
			lucky := count - (acts["drop"] - dropped)
			if lucky > maxLucky {
				t.Fatalf("the fast path dropped %v of %d forged ACKs", acts["drop"]-dropped, count)
			}
			if crossed > 8+lucky {
				t.Fatalf("%v packets crossed the queue; the probe accounts for 3", crossed)
			}
			if m["synguard_cookie_invalid_total"] < count-lucky {
				t.Fatalf("synguard_cookie_invalid_total %v does not count the %d forged ACKs", m["synguard_cookie_invalid_total"], count)
			}
		})
	}
}

// TestXDPDetachesWhenKilled: the program leaves with the process, however
// it ends; a new gateway attaches again, and traffic in between falls back
// to the rules (a SIGKILL leaves them, as before). In generic XDP and in
// tc; in tc a tc filter another tool put on the link stays, and keeps
// seeing the packets the program passes.
func TestXDPDetachesWhenKilled(t *testing.T) {
	for _, mode := range []string{"generic", "tc"} {
		t.Run(mode, func(t *testing.T) {
			topo := newLab(t, lab.Config{DisableIPv6: true})
			service := netip.AddrPortFrom(topo.BackendAddr, 80)
			serve(t, topo.Backend, service)
			ns, name := topo.Gateway, topo.GatewayClientSide
			var other *otherFilter
			if mode == "tc" {
				other = addOtherFilter(t, ns, name)
			}
			// attached reports whether the gateway's program is on the
			// link, and returns what to watch for its leaving.
			attached := func(g *gateway) (bool, func() bool) {
				if mode != "tc" {
					return xdpOnLink(t, ns, name), func() bool { return !xdpOnLink(t, ns, name) }
				}
				ids := tcLinks(t, g, ns, name)
				return len(ids) == 1, func() bool {
					for _, id := range ids {
						if !linkGone(id) {
							return false
						}
					}
					return true
				}
			}
			start := func() *gateway {
				g := startGateway(t, ns, "--protect", service.String(), "--mode", "always", "--xdp", mode)
				g.waitStarted()
				return g
			}

			g := start()
			on, gone := attached(g)
			if !on {
				t.Fatalf("no %s program on %s while the gateway runs", mode, name)
			}
			g.stop()
			if !gone() {
				t.Fatalf("%s program left on %s after SIGTERM", mode, name)
			}

			g = start()
			if on, gone = attached(g); !on {
				t.Fatalf("no %s program on %s after a restart", mode, name)
			}
			g.kill()
			poll.Must(t, 5*time.Second, "program left on the link after SIGKILL", gone)

			var seen uint64
			if other != nil {
				seen = other.packets(t)
			}
			g = start()
			poll.Must(t, 5*time.Second, "the restarted gateway's fast path never answered", func() bool {
				lab.Probe(context.Background(), topo.Client, service, time.Second)
				return g.xdpActions()["tx"] > 0
			})
			if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
				t.Fatalf("client failed after the restart: %v", r.Err)
			}
			if other != nil {
				if now := other.packets(t); now <= seen {
					t.Fatalf("the other tool's tc filter saw %d packets before the probes and %d after: the program does not hand on what it passes", seen, now)
				}
				g.stop()
				if out, err := ns.Output(context.Background(), "tc", "filter", "show", "dev", name, "ingress"); err != nil || !strings.Contains(out, "pref 7 bpf") {
					t.Fatalf("the other tool's tc filter is gone after the gateway stopped (%v):\n%s", err, out)
				}
			}
		})
	}
}

// otherFilter is another tool's tc filter on a link: a cls_bpf program at
// clsact ingress, ahead of nothing and behind tcx, that counts the packets
// it sees and lets them go on.
type otherFilter struct{ count *ebpf.Map }

func addOtherFilter(t *testing.T, ns *netns.NS, name string) *otherFilter {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TC_ACT_UNSPEC: on as if not here
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	// tc takes the program from a pin, in a bpffs of the test's own.
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	pin := dir + "/count"
	if err := prog.Pin(pin); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"qdisc", "add", "dev", name, "clsact"},
		{"filter", "add", "dev", name, "ingress", "pref", "7", "bpf", "direct-action", "pinned", pin},
	} {
		if err := ns.Run(context.Background(), "tc", args...); err != nil {
			t.Fatal(err)
		}
	}
	return &otherFilter{count: m}
}

// packets returns how many packets the filter has seen.
func (f *otherFilter) packets(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := f.count.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTCSYNACKChecksums: the tc program's SYN-ACKs carry checksums the
// client accepts, whichever way the SYN's checksum came. A SYN from the
// client's own stack arrives over veth with its checksum left for the
// kernel or a NIC to complete (CHECKSUM_PARTIAL), and its SYN-ACK goes out
// the same way: with the offload on it carries the pseudo-header sum,
// which completes to the segment's checksum, and with tx checksumming off
// on the gateway's link the kernel completes it, from csum_start, into a
// correct one. A SYN from a raw socket carries its full checksum
// (CHECKSUM_NONE), and so does its SYN-ACK; the client's stack answers it
// with a RST, which it does not for a segment with a bad checksum.
func TestTCSYNACKChecksums(t *testing.T) {
	for _, family := range []string{"IPv4", "IPv6"} {
		t.Run(family, func(t *testing.T) {
			topo := newLab(t, lab.Config{})
			service, client := netip.AddrPortFrom(topo.BackendAddr, 80), topo.ClientAddr
			if family == "IPv6" {
				service, client = netip.AddrPortFrom(topo.BackendAddr6, 80), topo.ClientAddr6
			}
			serve(t, topo.Backend, service)
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always",
				"--xdp", "tc", "--xdp-interfaces", topo.GatewayClientSide)
			g.waitStarted()
			poll.Must(t, 5*time.Second, "the fast path never answered a SYN", func() bool {
				lab.Probe(context.Background(), topo.Client, service, time.Second)
				return g.xdpActions()["tx"] > 0
			})
			c := capture(t, topo.Client, topo.ClientSide)

			// exchange runs send and returns the SYN-ACK the client got
			// for the first SYN it sent meanwhile (the segment alone),
			// and whether the client answered it with a RST.
			exchange := func(what string, send func()) (seg []byte, rst bool) {
				t.Helper()
				drainQuiet(t, c, 300*time.Millisecond)
				tx := g.xdpActions()["tx"]
				send()
				poll.Must(t, 3*time.Second, what+": the program answered no SYN", func() bool { return g.xdpActions()["tx"] > tx })
				var port uint16
				for _, s := range drainQuiet(t, c, 300*time.Millisecond) {
					switch {
					case s.outgoing && s.p.Flags == packet.SYN && port == 0:
						port = s.p.SrcPort
					case !s.outgoing && s.p.Flags == packet.SYN|packet.ACK && s.p.DstPort == port && seg == nil:
						seg = s.b[s.p.IPHeaderLen:]
					case s.outgoing && s.p.Flags&packet.RST != 0 && s.p.SrcPort == port && seg != nil:
						rst = true
					}
				}
				if seg == nil {
					t.Fatalf("%s: no SYN-ACK to the client's SYN captured", what)
				}
				return seg, rst
			}
			probe := func() {
				if r := lab.Probe(context.Background(), topo.Client, service, 3*time.Second); !r.OK {
					t.Fatalf("client failed: %v", r.Err)
				}
			}
			// want is the checksum the segment must carry on the wire.
			want := func(seg []byte) uint16 {
				z := bytes.Clone(seg)
				z[16], z[17] = 0, 0
				return packet.TCPChecksum(service.Addr(), client, z)
			}
			got := func(seg []byte) uint16 { return uint16(seg[16])<<8 | uint16(seg[17]) }

			seg, _ := exchange("offload on", probe)
			// Completing a partial checksum sums the segment with the
			// pseudo-header sum in the field.
			if completed := packet.Checksum(seg); completed != want(seg) {
				t.Fatalf("offload on: SYN-ACK checksum field %#04x completes to %#04x, want %#04x", got(seg), completed, want(seg))
			}

			if err := lab.SetTxChecksum(topo.Gateway, topo.GatewayClientSide, false); err != nil {
				t.Fatal(err)
			}
			seg, _ = exchange("offload off", probe)
			if got(seg) != want(seg) {
				t.Fatalf("offload off: SYN-ACK checksum %#04x, want %#04x", got(seg), want(seg))
			}
			if err := lab.SetTxChecksum(topo.Gateway, topo.GatewayClientSide, true); err != nil {
				t.Fatal(err)
			}

			raw := openIPSender(t, topo.Client)
			syn := make([]byte, packet.MaxHandshakeLen)
			n, err := packet.Build(syn, &packet.Segment{Src: netip.AddrPortFrom(client, 33333), Dst: service, Seq: 77,
				Flags: packet.SYN, Window: 64240, Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true}})
			if err != nil {
				t.Fatal(err)
			}
			seg, rst := exchange("raw socket", func() {
				if err := raw.send(syn[:n], service.Addr()); err != nil {
					t.Fatal(err)
				}
			})
			if got(seg) != want(seg) {
				t.Fatalf("raw socket: SYN-ACK checksum %#04x, want %#04x", got(seg), want(seg))
			}
			if !rst {
				t.Fatal("raw socket: the client's stack did not answer the SYN-ACK with a RST")
			}
		})
	}
}

// TestXDPAnswersFromTheStart: the program is in step before the start
// event, so the first client after it is answered at the driver, not
// passed to the backend while the engine's first control tick is due
// (the rules queue no SYN the program answers).
func TestXDPAnswersFromTheStart(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")
	g.waitStarted()
	if err := fetch(topo.Client, service, 1000, nil); err != nil {
		t.Fatal(err)
	}
	if n := g.metric("synguard_xdp_synack_sent_total"); n != 1 {
		t.Fatalf("the program sent %v SYN-ACKs for the first client, want 1", n)
	}
}
