package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/packet"
)

// binary is the synguard executable built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "synguard-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "synguard")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/synguard/synguard/cmd/synguard").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build synguard: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var labSeq atomic.Int32

// newLab builds a lab with a unique name, removed when the test ends.
func newLab(t *testing.T, cfg lab.Config) *lab.Topology {
	t.Helper()
	roottest.Require(t)
	cfg.Name = fmt.Sprintf("sge%d-%d", os.Getpid()%100000, labSeq.Add(1))
	topo, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Down(context.Background()); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return topo
}

// serve starts the lab HTTP backend at addr inside ns.
func serve(t *testing.T, ns *netns.NS, addr netip.AddrPort) *lab.Backend {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := lab.ServeBackend(ctx, ns, addr)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); b.Close() })
	return b
}

const metricsAddr = "127.0.0.1:9847"

// gateway is a running synguard process.
type gateway struct {
	t    *testing.T
	ns   *netns.NS
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	done chan error
}

// startGateway runs `synguard run ARGS --metrics ...` inside ns and waits
// until its metrics answer. The process is stopped with SIGTERM at cleanup
// and must then exit cleanly.
func startGateway(t *testing.T, ns *netns.NS, args ...string) *gateway {
	t.Helper()
	g := &gateway{t: t, ns: ns, log: &syncbuf.Buffer{}, done: make(chan error, 1)}
	args = append([]string{"run", "--metrics", metricsAddr}, args...)
	g.cmd = ns.Command(context.Background(), binary, args...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() {
		if g.cmd.ProcessState == nil {
			g.stop()
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.log.String())
		}
	})
	ready := poll.Until(15*time.Second, func() bool {
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("gateway exited at start: %v\n%s", err, g.log.String())
		default:
		}
		_, err := g.metrics()
		return err == nil
	})
	if !ready {
		t.Fatalf("gateway not ready after 15s:\n%s", g.log.String())
	}
	return g
}

// stop sends SIGTERM and requires a clean exit.
func (g *gateway) stop() {
	g.t.Helper()
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-g.done:
		if err != nil {
			g.t.Errorf("gateway exit: %v\n%s", err, g.log.String())
		}
	case <-time.After(20 * time.Second):
		_ = g.cmd.Process.Kill()
		g.t.Errorf("gateway did not stop on SIGTERM:\n%s", g.log.String())
	}
}

func (g *gateway) metrics() (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return lab.ScrapeMetrics(ctx, g.ns, metricsAddr)
}

func (g *gateway) metric(name string) float64 {
	g.t.Helper()
	m, err := g.metrics()
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	return m[name]
}

// flood runs a bounded spoofed SYN flood from ns and returns a function
// that waits for it to finish.
func flood(t *testing.T, ns *netns.NS, target netip.AddrPort, rate, count int, d time.Duration) (wait func() string) {
	t.Helper()
	return floodWith(t, ns, target, rate, count, d)
}

// floodWith is flood with more of bench flood's flags.
func floodWith(t *testing.T, ns *netns.NS, target netip.AddrPort, rate, count int, d time.Duration, flags ...string) (wait func() string) {
	t.Helper()
	args := append([]string{"bench", "flood", "--target", target.String(),
		"--rate", fmt.Sprint(rate), "--count", fmt.Sprint(count), "--duration", d.String()}, flags...)
	cmd := ns.Command(context.Background(), binary, args...)
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var once sync.Once
	var result string
	wait = func() string {
		once.Do(func() {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("flood: %v: %s", err, out.String())
				}
			case <-time.After(d + 30*time.Second):
				_ = cmd.Process.Kill()
				t.Errorf("flood did not stop by itself")
			}
			result = out.String()
		})
		return result
	}
	t.Cleanup(func() { wait() })
	return wait
}

// floodSent returns how many SYNs a flood reported sending ("sent N SYNs
// in ..." for each generator in out).
func floodSent(t *testing.T, out string) int {
	t.Helper()
	total, found := 0, false
	for line := range strings.Lines(out) {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "sent %d SYNs", &n); err == nil {
			total, found = total+n, true
		}
	}
	if !found {
		t.Fatalf("no \"sent N SYNs\" line in the flood's output:\n%s", out)
	}
	return total
}

// httpClient makes connections from inside ns.
func httpClient(ns *netns.NS) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// fetch gets /bytes/n from target inside ns, calling progress with the
// running byte count, and checks the body's length and SHA-256. It
// returns errors instead of failing the test, so that it can also run in
// a goroutine of its own.
func fetch(ns *netns.NS, target netip.AddrPort, n int64, progress func(int64)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/bytes/%d", target, n), nil)
	resp, err := httpClient(ns).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var got int64
	for {
		k, err := resp.Body.Read(buf)
		h.Write(buf[:k])
		got += int64(k)
		if progress != nil && k > 0 {
			progress(got)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", got, err)
		}
	}
	if got != n {
		return fmt.Errorf("downloaded %d bytes, want %d", got, n)
	}
	if sum := lab.ContentSHA256(n); !bytes.Equal(h.Sum(nil), sum[:]) {
		return fmt.Errorf("download of %d bytes corrupted: checksum mismatch", n)
	}
	return nil
}

// download is fetch in the test's own goroutine: a failure ends the test.
func download(t *testing.T, ns *netns.NS, target netip.AddrPort, n int64, progress func(int64)) {
	t.Helper()
	if err := fetch(ns, target, n, progress); err != nil {
		t.Fatalf("download from %s: %v", target, err)
	}
}

// watchSYNs counts SYNs arriving at the backend for the rest of the test.
func watchSYNs(t *testing.T, topo *lab.Topology) *lab.SYNWatch {
	t.Helper()
	w, err := lab.WatchSYNs(topo.Backend, topo.BackendSide)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// handedOff lists the conntrack entries synguard created in ns.
func handedOff(t *testing.T, ns *netns.NS) []conntrack.Entry {
	t.Helper()
	var entries []conntrack.Entry
	err := ns.Do(func() error {
		tab, err := conntrack.Open()
		if err != nil {
			return err
		}
		defer tab.Close()
		entries, err = tab.Marked(firewall.DefaultHandoffMark)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// saved returns iptables-save and ip6tables-save output inside ns.
func saved(t *testing.T, ns *netns.NS) string {
	t.Helper()
	var all strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := ns.Output(context.Background(), tool)
		if err != nil {
			t.Fatal(err)
		}
		all.WriteString(out)
	}
	return all.String()
}

func sysctl(t *testing.T, ns *netns.NS, name string) string {
	t.Helper()
	out, err := ns.Output(context.Background(), "sysctl", "-n", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// serviceMetric reads one per-service sample (label service="svc") of a
// metric, where ParseMetrics would sum over all services. A sample that is
// absent reads as 0.
func (g *gateway) serviceMetric(name string, svc netip.AddrPort) float64 {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	resp, err := httpClient(g.ns).Do(req)
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	prefix := fmt.Sprintf("%s{service=%q} ", name, svc.String())
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				g.t.Fatalf("metrics line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// capture records the packets crossing iface in ns for the rest of the
// test; drain reads them.
func capture(t *testing.T, ns *netns.NS, iface string) *lab.Capture {
	t.Helper()
	c, err := lab.OpenCapture(ns, iface)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// captured is one TCP segment a capture saw, with its bytes.
type captured struct {
	b        []byte
	p        packet.Packet
	outgoing bool
}

// drain returns the TCP segments c has buffered, reading until nothing
// arrives for 200 ms. Packets that do not parse (ARP, NDP) are skipped.
func drain(t *testing.T, c *lab.Capture) []captured {
	t.Helper()
	return drainQuiet(t, c, 200*time.Millisecond)
}

// drainQuiet is drain, reading until nothing arrives for quiet.
func drainQuiet(t *testing.T, c *lab.Capture, quiet time.Duration) []captured {
	t.Helper()
	var out []captured
	buf := make([]byte, 64<<10)
	for {
		n, outgoing, err := c.Read(buf, quiet)
		if errors.Is(err, lab.ErrCaptureTimeout) {
			return out
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		var p packet.Packet
		if packet.Parse(buf[:n], &p) == nil {
			out = append(out, captured{bytes.Clone(buf[:n]), p, outgoing})
		}
	}
}

// checkHandOffMidTransfer downloads 64 MiB from service at 16 MiB/s, so
// that the transfer spans seconds, and checks while it runs that the flow
// from client was handed off: one conntrack entry, ESTABLISHED, with the
// reply sequence adjustment, and a queue counter that stays flat from
// 16 MiB to 48 MiB (two seconds apart).
func checkHandOffMidTransfer(t *testing.T, g *gateway, topo *lab.Topology, service netip.AddrPort, client netip.Addr) {
	t.Helper()
	var q1, q2, want float64
	var read1, read2 bool // q1 and q2 may well be 0
	var entries []conntrack.Entry
	err := slowDownload(topo.Client, service, 64*mib, 16*mib, func(got int64) {
		switch {
		case !read1 && got >= 16*mib:
			q1, read1 = g.metric("synguard_queue_received_total"), true
			want = g.handshakeQueued() // not at the end: the close crosses the queue too
			entries = handedOff(t, topo.Gateway)
		case !read2 && got >= 48*mib:
			q2, read2 = g.metric("synguard_queue_received_total"), true
		}
	})
	if err != nil {
		t.Fatalf("download from %s: %v", service, err)
	}
	if !read1 || !read2 {
		t.Fatalf("the download's progress was not seen at 16 and 48 MiB")
	}
	if q1 < want || q1 != q2 {
		t.Fatalf("queue packets at 16 MiB: %v, at 48 MiB: %v; want the same, at least %v (SYN unless XDP answered it, ACK, backend SYN-ACK)", q1, q2, want)
	}
	t.Logf("queue saw %v packets for the whole connection", q2)
	if len(entries) != 1 {
		t.Fatalf("%d handed-off conntrack entries mid-transfer, want 1: %+v", len(entries), entries)
	}
	e := entries[0]
	if e.Client.Addr() != client || e.Server != service || e.TCPState != conntrack.TCPEstablished {
		t.Fatalf("conntrack entry %+v", e)
	}
	if !e.Status.Has(conntrack.StatusSeqAdjust) || e.SeqAdjReply.Before == 0 || e.SeqAdjReply.Before != e.SeqAdjReply.After {
		t.Fatalf("conntrack entry lacks the reply sequence adjustment: status %v adj %+v", e.Status, e.SeqAdjReply)
	}
	if v := g.metric("synguard_flows_handed_off_total"); v != 1 {
		t.Fatalf("flows handed off = %v, want 1", v)
	}
}

// kernelQueues reads the kernel's table of the queues in ns.
func kernelQueues(t testing.TB, ns *netns.NS) []nfq.KernelQueueStats {
	t.Helper()
	var qs []nfq.KernelQueueStats
	if err := ns.Do(func() (err error) {
		qs, err = nfq.KernelStats()
		return err
	}); err != nil {
		t.Fatalf("queue state in %s: %v", ns.Name, err)
	}
	return qs
}

// handshakeQueued is how many packets of the cookie-mode handshakes so
// far (one, unless early data says otherwise) crossed the queues: the
// SYN, unless the XDP fast path answered it, the client's cookie ACK and
// the backend's SYN-ACK, unless the fast path's tc programs completed the
// handshake, and the segments that met no entry (early data, translated).
func (g *gateway) handshakeQueued() float64 {
	g.t.Helper()
	m, err := g.metrics()
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	early := m["synguard_early_data_held_total"] + m["synguard_early_data_refused_total"] + m["synguard_translated_client_total"] + m["synguard_translated_backend_total"]
	switch {
	case m["synguard_xdp_handshake_completed_total"] > 0:
		return early // the tc programs did the whole handshake
	case m["synguard_xdp_synack_sent_total"] > 0:
		return 2 + early
	}
	return 3 + early
}
