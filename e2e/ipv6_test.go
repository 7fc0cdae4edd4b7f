package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/rawsock"
)

// service6 is the IPv6 HTTP service of a lab.
func service6(t *testing.T, topo *lab.Topology) netip.AddrPort {
	t.Helper()
	if !topo.BackendAddr6.IsValid() {
		t.Fatal("lab has no IPv6")
	}
	return netip.AddrPortFrom(topo.BackendAddr6, 80)
}

// TestIPv6HandOffToKernel: TestHandOffToKernel over IPv6. The rules go
// through ip6tables only, a 64 MiB download is intact, its flow sits in
// kernel conntrack with the reply sequence adjustment, the queue sees
// nothing of it after the handshake, and a stop removes every rule.
func TestIPv6HandOffToKernel(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := service6(t, topo)
	serve(t, topo.Backend, service)
	// The lab's gateway forwards already; turn IPv6 forwarding off to see
	// synguard turn it on and put it back.
	ctx := context.Background()
	if err := topo.Gateway.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")

	v6, err := topo.Gateway.Output(ctx, "ip6tables-save")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"-A PREROUTING -j SYNGUARD-PREROUTING",
		"-A FORWARD -j SYNGUARD-FORWARD",
		"-A SYNGUARD-PREROUTING -d 2001:db8:b::2/128 -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE",
		"-A SYNGUARD-OUTPUT -m mark --mark 0x53470001 -j CT --notrack",
	} {
		if !strings.Contains(v6, want) {
			t.Fatalf("ip6tables-save lacks %q:\n%s", want, v6)
		}
	}
	// An IPv6-only configuration leaves the IPv4 tables alone.
	if v4, err := topo.Gateway.Output(ctx, "iptables-save"); err != nil || strings.Contains(v4, "SYNGUARD") {
		t.Fatalf("IPv4 rules installed for an IPv6-only service (err %v):\n%s", err, v4)
	}
	if v := sysctl(t, topo.Gateway, "net.ipv6.conf.all.forwarding"); v != "1" {
		t.Fatalf("net.ipv6.conf.all.forwarding = %s, want 1", v)
	}

	checkHandOffMidTransfer(t, g, topo, service, topo.ClientAddr6)

	g.stop()
	if s := saved(t, topo.Gateway); strings.Contains(s, "SYNGUARD") {
		t.Fatalf("rules left after SIGTERM:\n%s", s)
	}
	if v := sysctl(t, topo.Gateway, "net.ipv6.conf.all.forwarding"); v != "0" {
		t.Fatalf("net.ipv6.conf.all.forwarding = %s after stop, want 0 restored", v)
	}
}

// TestIPv6LocalMode protects an IPv6 service on the gateway host itself.
func TestIPv6LocalMode(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr6, 8080)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Backend, "--protect", service.String(), "--mode", "always", "--local")
	if s := saved(t, topo.Backend); !strings.Contains(s, "-A SYNGUARD-INPUT -d 2001:db8:b::2/128") {
		t.Fatalf("local IPv6 rules not installed:\n%s", s)
	}
	download(t, topo.Client, service, 16*mib, nil)
	if v := g.metric("synguard_flows_handed_off_total"); v != 1 {
		t.Fatalf("handed off %v flows, want 1", v)
	}
	if entries := handedOff(t, topo.Backend); len(entries) != 1 || entries[0].Client.Addr() != topo.ClientAddr6 {
		t.Fatalf("conntrack entries %+v, want 1 from %s", entries, topo.ClientAddr6)
	}
}

// TestDualStack protects an IPv4 and an IPv6 service in one run: each
// family gets its own rules, downloads over both are intact and handed
// off, each counted under its own service, and a stop removes both.
func TestDualStack(t *testing.T) {
	topo := newLab(t, lab.Config{})
	svc4 := netip.AddrPortFrom(topo.BackendAddr, 80)
	svc6 := service6(t, topo)
	serve(t, topo.Backend, svc4)
	serve(t, topo.Backend, svc6)
	g := startGateway(t, topo.Gateway, "--protect", svc4.String(), "--protect", svc6.String(), "--mode", "always")

	ctx := context.Background()
	for _, f := range []struct{ tool, want, not string }{
		{"iptables-save", "-d 203.0.113.2/32 -p tcp -m tcp --dport 80", "2001:db8"},
		{"ip6tables-save", "-d 2001:db8:b::2/128 -p tcp -m tcp --dport 80", "203.0.113"},
	} {
		out, err := topo.Gateway.Output(ctx, f.tool)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "-A SYNGUARD-PREROUTING "+f.want) || !strings.Contains(out, "-A SYNGUARD-FORWARD "+f.want) {
			t.Fatalf("%s lacks the rules for its service (%s):\n%s", f.tool, f.want, out)
		}
		if strings.Contains(out, f.not) {
			t.Fatalf("%s holds a rule of the other family:\n%s", f.tool, out)
		}
	}

	download(t, topo.Client, svc4, 32*mib, nil)
	download(t, topo.Client, svc6, 32*mib, nil)
	for _, s := range []netip.AddrPort{svc4, svc6} {
		if v := g.serviceMetric("synguard_flows_handed_off_total", s); v != 1 {
			t.Fatalf("service %s: %v flows handed off, want 1", s, v)
		}
		if v := g.serviceMetric("synguard_option_mismatch_total", s); v != 0 {
			t.Fatalf("service %s: %v option mismatches, want 0", s, v)
		}
	}
	// Closed flows keep their entries (TIME_WAIT) with the hand-off mark.
	fams := map[bool]int{}
	for _, e := range handedOff(t, topo.Gateway) {
		fams[e.Server.Addr().Is6()]++
	}
	if fams[false] != 1 || fams[true] != 1 {
		t.Fatalf("handed-off entries: %d IPv4, %d IPv6; want 1 of each", fams[false], fams[true])
	}

	g.stop()
	if s := saved(t, topo.Gateway); strings.Contains(s, "SYNGUARD") {
		t.Fatalf("rules left after SIGTERM:\n%s", s)
	}
}

// TestIPv6BackendMSSLearned: the backend's link has a 1400-byte MTU, so it
// announces MSS 1340 rather than the 1440 synguard assumes for IPv6 until
// it learns better. The cookie SYN-ACK the client receives must carry the
// backend's real options, as the backend's own SYN-ACK to the replayed SYN
// shows them, and no mismatch may be counted.
func TestIPv6BackendMSSLearned(t *testing.T) {
	topo := newLab(t, lab.Config{})
	const mtu = 1400
	for _, l := range []struct {
		ns    *netns.NS
		iface string
	}{{topo.Backend, topo.BackendSide}, {topo.Gateway, topo.GatewayBackendSide}} {
		if err := l.ns.Run(context.Background(), "ip", "link", "set", l.iface, "mtu", strconv.Itoa(mtu)); err != nil {
			t.Fatal(err)
		}
	}
	service := service6(t, topo)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")

	atClient := capture(t, topo.Client, topo.ClientSide)
	atBackend := capture(t, topo.Backend, topo.BackendSide)
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("client: %v", r.Err)
	}
	download(t, topo.Client, service, 16*mib, nil)

	synACK := func(c *lab.Capture, outgoing bool) packet.Options {
		t.Helper()
		for _, s := range drain(t, c) {
			if s.outgoing == outgoing && s.p.Flags == packet.SYN|packet.ACK &&
				s.p.Source() == service && s.p.Dst == topo.ClientAddr6 {
				return s.p.Options
			}
		}
		t.Fatal("no SYN-ACK from the service to the client captured")
		return packet.Options{}
	}
	toClient := synACK(atClient, false)
	fromBackend := synACK(atBackend, true)
	t.Logf("SYN-ACK to the client: MSS %d, window scale %d, SACK %v; the backend's own: MSS %d, window scale %d, SACK %v",
		toClient.MSS, toClient.WindowScale, toClient.SACKPermitted, fromBackend.MSS, fromBackend.WindowScale, fromBackend.SACKPermitted)
	if !fromBackend.HasMSS || fromBackend.MSS != mtu-packet.IPv6HeaderLen-packet.TCPHeaderLen {
		t.Fatalf("backend announced MSS %d (present %v), want %d from its MTU: the lab is not what this test needs",
			fromBackend.MSS, fromBackend.HasMSS, mtu-packet.IPv6HeaderLen-packet.TCPHeaderLen)
	}
	if toClient.HasMSS != fromBackend.HasMSS || toClient.MSS != fromBackend.MSS {
		t.Fatalf("client was told MSS %d, the backend announces %d", toClient.MSS, fromBackend.MSS)
	}
	if toClient.HasWindowScale != fromBackend.HasWindowScale || toClient.WindowScale != fromBackend.WindowScale {
		t.Fatalf("client was told window scale %d (%v), the backend announces %d (%v)",
			toClient.WindowScale, toClient.HasWindowScale, fromBackend.WindowScale, fromBackend.HasWindowScale)
	}
	if toClient.SACKPermitted != fromBackend.SACKPermitted {
		t.Fatalf("client was told SACK %v, the backend announces %v", toClient.SACKPermitted, fromBackend.SACKPermitted)
	}
	if v := g.metric("synguard_option_mismatch_total"); v != 0 {
		t.Fatalf("option_mismatch = %v, want 0", v)
	}
	// The learning is reported, under the service's bracketed name.
	var learned bool
	for line := range strings.Lines(g.log.String()) {
		var ev struct {
			Event, Service, Source string
			MSS                    uint16
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "backend_options_learned" {
			learned = learned || (ev.Service == service.String() && ev.MSS == fromBackend.MSS)
		}
	}
	if !learned {
		t.Fatalf("no backend_options_learned event for %s with MSS %d:\n%s", service, fromBackend.MSS, g.log.String())
	}
}

// TestIPv6ExtensionHeaders checks the extension-header rule end to end,
// with SYNs the client sends through a raw socket:
//   - behind a destination-options header: ip6tables' tcp match walks the
//     header chain and queues it, packet.Parse walks it too, and the engine
//     answers;
//   - split into two fragments: the gateway's conntrack reassembles it
//     before the raw table, so the engine sees a whole SYN and answers;
//   - behind a header neither walks (Mobility): the tcp match does not see
//     TCP, so the SYN is not queued at all, and the backend's IPv6 stack
//     discards it as an unknown protocol. No TCP state anywhere.
func TestIPv6ExtensionHeaders(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := service6(t, topo)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")

	var s *rawsock.Sender
	if err := topo.Client.Do(func() (err error) {
		s, err = rawsock.Open(firewall.DefaultEngineMark)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	atClient := capture(t, topo.Client, topo.ClientSide)
	unknownProtos := func() int {
		t.Helper()
		out, err := topo.Backend.Output(context.Background(), "cat", "/proc/net/snmp6")
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6InUnknownProtos" {
				n, err := strconv.Atoi(f[1])
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatal("no Ip6InUnknownProtos in the backend's /proc/net/snmp6")
		return 0
	}
	unknownBefore := unknownProtos()

	// Each SYN from its own port, so the answers can be told apart.
	synFrom := func(port uint16) packet.Segment {
		return packet.Segment{
			Src: netip.AddrPortFrom(topo.ClientAddr6, port), Dst: service, Seq: uint32(port) << 16, Flags: packet.SYN, Window: 64800,
			Options: packet.Options{MSS: 1440, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true},
		}
	}
	const (
		portDestOpts   = 40001
		portFragmented = 40002
		portMobility   = 40003
		protoDestOpts  = 60
		protoMobility  = 135
	)
	send := func(b []byte) {
		t.Helper()
		if err := s.Send(b, service.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	send(withExtension(t, synFrom(portDestOpts), protoDestOpts))
	for _, f := range fragments(t, synFrom(portFragmented), 24) {
		send(f)
	}
	send(withExtension(t, synFrom(portMobility), protoMobility))

	answered := map[uint16]bool{}
	deadline := time.Now().Add(3 * time.Second)
	for len(answered) < 2 && time.Now().Before(deadline) {
		for _, c := range drain(t, atClient) {
			p := c.p
			if !c.outgoing && p.Flags == packet.SYN|packet.ACK && p.Source() == service &&
				p.Dst == topo.ClientAddr6 && p.Ack == uint32(p.DstPort)<<16+1 {
				answered[p.DstPort] = true
			}
		}
	}
	if !answered[portDestOpts] {
		t.Error("no SYN-ACK for a SYN with a destination-options header")
	}
	if !answered[portFragmented] {
		t.Error("no SYN-ACK for a fragmented SYN")
	}
	if answered[portMobility] {
		t.Error("a SYN behind a Mobility header was answered")
	}
	// The Mobility-header SYN crosses the gateway unseen; wait for the
	// backend to have discarded it.
	poll.Until(3*time.Second, func() bool { return unknownProtos()-unknownBefore >= 1 })
	if d := unknownProtos() - unknownBefore; d != 1 {
		t.Errorf("backend discarded %d packets as unknown protocols, want 1 (the Mobility-header SYN)", d)
	}
	if syns, acks := g.metric("synguard_syn_received_total"), g.metric("synguard_synack_sent_total"); syns != 2 || acks != 2 {
		t.Errorf("engine saw %v SYNs and answered %v, want 2 and 2", syns, acks)
	}
}

// withExtension builds seg (IPv6) with one 8-byte extension header of
// protocol proto (a PadN option as its content) between the IPv6 and TCP
// headers. The TCP checksum stays valid: its pseudo-header holds the
// upper-layer length, not the payload length.
func withExtension(t *testing.T, seg packet.Segment, proto byte) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &seg)
	if err != nil {
		t.Fatal(err)
	}
	const protoTCP = 6
	out := make([]byte, 0, n+8)
	out = append(out, b[:packet.IPv6HeaderLen]...)
	out = append(out, protoTCP, 0, 1, 4, 0, 0, 0, 0) // next TCP, length 8, PadN(4)
	out = append(out, b[packet.IPv6HeaderLen:n]...)
	out[6] = proto
	setPayloadLen(out)
	return out
}

// fragments builds seg (IPv6) and splits its TCP segment into two IPv6
// fragments, the first carrying first bytes (a multiple of 8 that holds
// the whole TCP header, as RFC 7112 and Linux require).
func fragments(t *testing.T, seg packet.Segment, first int) [][]byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &seg)
	if err != nil {
		t.Fatal(err)
	}
	tcp := b[packet.IPv6HeaderLen:n]
	if first%8 != 0 || first < packet.TCPHeaderLen || first >= len(tcp) {
		t.Fatalf("cannot split a %d-byte segment after %d bytes", len(tcp), first)
	}
	const protoTCP, protoFragment = 6, 44
	frag := func(off int, more bool, data []byte) []byte {
		offFlags := uint16(off/8) << 3
		if more {
			offFlags |= 1
		}
		f := append([]byte(nil), b[:packet.IPv6HeaderLen]...)
		f = append(f, protoTCP, 0, byte(offFlags>>8), byte(offFlags), 0x53, 0x47, 0, 1) // identification 0x53470001
		f = append(f, data...)
		f[6] = protoFragment
		setPayloadLen(f)
		return f
	}
	return [][]byte{frag(0, true, tcp[:first]), frag(first, false, tcp[first:])}
}

func setPayloadLen(b []byte) {
	n := len(b) - packet.IPv6HeaderLen
	b[4], b[5] = byte(n>>8), byte(n)
}
