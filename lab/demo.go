package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/synguard/synguard/lab/netns"
)

// DemoConfig configures Demo.
type DemoConfig struct {
	Name      string        // namespace prefix
	Duration  time.Duration // how long the flood runs
	FloodRate int           // spoofed SYNs per second
	Clients   int           // legitimate connections per second
	// Binary is the synguard executable run inside the namespaces; empty
	// means the running executable.
	Binary string
	// Port is the backend's HTTP port; 0 means 80.
	Port uint16
	// Mode is the gateway's --mode; empty means always.
	Mode string
}

// demoMetricsAddr is where the demo's gateway serves metrics, inside the
// gateway namespace (so it can be any port without clashing with the host).
const demoMetricsAddr = "127.0.0.1:9847"

// Demo builds a lab, runs the gateway in cookie mode in front of a real
// HTTP backend, floods it with spoofed SYNs while legitimate clients keep
// connecting, prints a live line per second, and tears everything down.
func Demo(ctx context.Context, cfg DemoConfig, out io.Writer) (err error) {
	if cfg.Binary == "" {
		if cfg.Binary, err = os.Executable(); err != nil {
			return fmt.Errorf("find synguard executable: %w", err)
		}
	}
	if cfg.Port == 0 {
		cfg.Port = 80
	}
	if cfg.Mode == "" {
		cfg.Mode = "always"
	}
	t, err := Up(ctx, Config{Name: cfg.Name})
	if err != nil {
		return err
	}
	defer func() {
		if derr := t.Down(context.Background()); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	service := netip.AddrPortFrom(t.BackendAddr, cfg.Port)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	backend, err := ServeBackend(ctx, t.Backend, service)
	if err != nil {
		return err
	}
	defer backend.Close()
	syns, err := WatchSYNs(t.Backend, t.BackendSide)
	if err != nil {
		return err
	}
	defer syns.Close()

	gwLog, err := os.CreateTemp("", "synguard-demo-gateway-*.log")
	if err != nil {
		return err
	}
	defer gwLog.Close()
	gw := t.Gateway.Command(context.Background(), cfg.Binary, "run", "--protect", service.String(),
		"--mode", cfg.Mode, "--metrics", demoMetricsAddr)
	gw.Stdout, gw.Stderr = gwLog, gwLog
	if err := gw.Start(); err != nil {
		return fmt.Errorf("start gateway: %w", err)
	}
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Wait() }()
	defer stopProcess(gw, gwDone)

	scraper := &metricsScraper{ns: t.Gateway, addr: demoMetricsAddr}
	if err := scraper.waitReady(ctx, gwDone, 10*time.Second); err != nil {
		return fmt.Errorf("gateway did not start (log: %s): %w", gwLog.Name(), err)
	}
	fmt.Fprintf(out, "lab %s: client %s -> gateway (synguard --mode %s) -> backend %s\n", t.Name, t.ClientAddr, cfg.Mode, service)
	fmt.Fprintf(out, "flood: %d spoofed SYN/s from %s for %s; legitimate clients: %d/s\n", cfg.FloodRate, SpoofPrefix4, cfg.Duration, cfg.Clients)

	count := strconv.Itoa(cfg.FloodRate * int(cfg.Duration/time.Second+1))
	flood := t.Client.Command(context.Background(), cfg.Binary, "bench", "flood", "--target", service.String(),
		"--rate", strconv.Itoa(cfg.FloodRate), "--count", count, "--duration", cfg.Duration.String())
	var floodOut strings.Builder
	flood.Stdout, flood.Stderr = &floodOut, &floodOut
	if err := flood.Start(); err != nil {
		return fmt.Errorf("start flood: %w", err)
	}
	floodDone := make(chan error, 1)
	go func() { floodDone <- flood.Wait() }()
	defer stopProcess(flood, floodDone)

	probes := newProbeTally()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runClients(ctx, t.Client, service, cfg.Clients, cfg.Duration+2*time.Second, probes)
	}()

	fmt.Fprintf(out, "%5s %-11s %10s %10s %8s %8s %9s %9s %10s\n", "t", "mode", "SYN/s", "SYN-ACK/s", "valid", "invalid", "handoffs", "legit ok", "p50 hs")
	prev, _ := scraper.scrape(ctx)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	end := start.Add(cfg.Duration + 2*time.Second)
	for now := range tick.C {
		text, err := ScrapeMetricsText(ctx, t.Gateway, demoMetricsAddr)
		if err != nil {
			return fmt.Errorf("read gateway metrics: %w", err)
		}
		cur, err := ParseMetrics(strings.NewReader(text))
		if err != nil {
			return fmt.Errorf("read gateway metrics: %w", err)
		}
		ok, total, p50 := probes.window()
		hs := "-"
		if p50 > 0 {
			hs = p50.Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(out, "%4.0fs %-11s %10.0f %10.0f %8.0f %8.0f %9.0f %5d/%-3d %10s\n",
			now.Sub(start).Seconds(), CurrentMode(text),
			cur["synguard_syn_received_total"]-prev["synguard_syn_received_total"],
			cur["synguard_synack_sent_total"]-prev["synguard_synack_sent_total"],
			cur["synguard_cookie_valid_total"]-prev["synguard_cookie_valid_total"],
			cur["synguard_cookie_invalid_total"]-prev["synguard_cookie_invalid_total"],
			cur["synguard_flows_handed_off_total"]-prev["synguard_flows_handed_off_total"],
			ok, total, hs)
		prev = cur
		if now.After(end) || ctx.Err() != nil {
			break
		}
	}
	cancel()
	wg.Wait()
	<-floodDone
	floodDone <- nil // for the deferred stop

	syns.Close()
	okAll, totalAll := probes.totals()
	fmt.Fprintf(out, "flood: %s", floodOut.String())
	fmt.Fprintf(out, "legitimate clients: %d of %d succeeded\n", okAll, totalAll)
	fmt.Fprintf(out, "backend: %d SYNs from spoofed sources, %d from the client, %d in all\n",
		syns.Spoofed(), syns.From(t.ClientAddr), syns.Total())
	return nil
}

// stopProcess ends a child with SIGTERM, then SIGKILL after a grace time.
func stopProcess(cmd *exec.Cmd, done chan error) {
	if cmd.Process == nil {
		return
	}
	select {
	case err := <-done:
		done <- err
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		done <- err
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		done <- <-done
	}
}

// runClients starts rate legitimate probes per second until d passes.
func runClients(ctx context.Context, ns *netns.NS, target netip.AddrPort, rate int, d time.Duration, tally *probeTally) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := Probe(context.Background(), ns, target, 5*time.Second)
				tally.add(r)
			}()
		}
	}
}

// probeTally accumulates probe results for the live report.
type probeTally struct {
	mu              sync.Mutex
	ok, total       int
	winOK, winTotal int
	winHS           []time.Duration
}

func newProbeTally() *probeTally { return &probeTally{} }

func (p *probeTally) add(r ProbeResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total++
	p.winTotal++
	if r.OK {
		p.ok++
		p.winOK++
		p.winHS = append(p.winHS, r.Handshake)
	}
}

// window returns the last second's successes, attempts and median
// handshake time, and starts a new window.
func (p *probeTally) window() (ok, total int, p50 time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ok, total = p.winOK, p.winTotal
	if len(p.winHS) > 0 {
		slices.Sort(p.winHS)
		p50 = p.winHS[len(p.winHS)/2]
	}
	p.winOK, p.winTotal, p.winHS = 0, 0, p.winHS[:0]
	return ok, total, p50
}

func (p *probeTally) totals() (ok, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok, p.total
}

// metricsScraper reads the gateway's Prometheus endpoint from inside its
// namespace and sums each metric over its labels.
type metricsScraper struct {
	ns   *netns.NS
	addr string
}

func (s *metricsScraper) client() *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return dial(ctx, s.ns, ap)
		}},
	}
}

func (s *metricsScraper) scrape(ctx context.Context) (map[string]float64, error) {
	return ScrapeMetrics(ctx, s.ns, s.addr)
}

// ScrapeMetrics fetches http://addr/metrics from inside ns and sums each
// metric over its label sets.
func ScrapeMetrics(ctx context.Context, ns *netns.NS, addr string) (map[string]float64, error) {
	text, err := ScrapeMetricsText(ctx, ns, addr)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(strings.NewReader(text))
}

// ScrapeMetricsText fetches http://addr/metrics from inside ns as text.
func ScrapeMetricsText(ctx context.Context, ns *netns.NS, addr string) (string, error) {
	s := &metricsScraper{ns: ns, addr: addr}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	c := s.client()
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (s *metricsScraper) waitReady(ctx context.Context, exited <-chan error, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := s.scrape(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		select {
		case err := <-exited:
			return fmt.Errorf("gateway exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CurrentMode returns the mode label of the synguard_mode series that is
// 1 in a metrics text, or "?" when there is none.
func CurrentMode(metrics string) string {
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, "synguard_mode{") || !strings.HasSuffix(line, " 1") {
			continue
		}
		if _, rest, ok := strings.Cut(line, `mode="`); ok {
			m, _, _ := strings.Cut(rest, `"`)
			return m
		}
	}
	return "?"
}

// ParseMetrics reads Prometheus text exposition and sums each metric's
// samples over all label sets.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name = line[:i]
			j := strings.LastIndexByte(line, '}')
			if j < i {
				return nil, fmt.Errorf("bad metrics line %q", line)
			}
			rest = strings.TrimSpace(line[j+1:])
		}
		valStr, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		v, err := strconv.ParseFloat(valStr, 64)
		if err != nil {
			return nil, fmt.Errorf("bad metrics value in %q: %w", line, err)
		}
		out[name] += v
	}
	return out, sc.Err()
}
