package gateway

import (
	"context"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/xdp"
)

// lifecycleConfig is a gateway for one service in a namespace of its
// own, with the metrics endpoint on and backend options fixed: the
// learner's probes would leave the namespace from a goroutine that is not
// in it.
func lifecycleConfig() Config {
	return Config{
		Services:    []engine.ServiceConfig{{Addr: netip.MustParseAddrPort("192.0.2.10:80")}},
		Mode:        engine.ModeAlways,
		Queue:       7,
		Queues:      2,
		MetricsAddr: "127.0.0.1:0",
		Backend:     &engine.BackendOptions{MSS: 1460, WindowScale: 7, SACKPermitted: true},
		XDP:         xdp.ModeOff, // the namespace has no link it could go on
		Logger:      zerolog.Nop(),
	}
}

// projectGoroutines lists the stacks of the goroutines other than the
// caller's that run this project's code, at once: a goroutine serve did
// not wait for may still be on its way out, and a later look would miss
// it.
func projectGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	// The first stack is the caller's own.
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i > 0 && strings.Contains(g, "github.com/synguard/synguard/") {
			left = append(left, g)
		}
	}
	return left
}

// serveIn runs a gateway for cfg in namespace ns as Run does, letting
// prepare act on it before it serves (add a part, break one, cancel ctx),
// and requires none of its goroutines to be left when it returns. It
// returns serve's error and the namespace's rules afterwards.
func serveIn(t *testing.T, ns *netns.NS, ctx context.Context, cfg Config, prepare func(g *gateway)) (error, string) {
	t.Helper()
	var serveErr error
	var left []string
	err := ns.Do(func() error {
		var served bool
		serveErr = run(ctx, cfg, func(g *gateway) {
			prepare(g)
			served = true
		})
		if !served {
			return serveErr // open or install failed
		}
		// Whatever still runs now, serve (or close) left behind.
		left = projectGoroutines()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("serve returned with goroutines still running:\n%s", strings.Join(left, "\n\n"))
	}
	return serveErr, iptablesSave(t, ns)
}

func iptablesSave(t *testing.T, ns *netns.NS) string {
	t.Helper()
	rules, err := ns.Output(context.Background(), "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// runFailing serves a gateway with a context nobody cancels, after fail
// broke it: only a part's failure can end serve.
func runFailing(t *testing.T, fail func(g *gateway)) (error, string) {
	t.Helper()
	return serveIn(t, nstest.New(t, "sggw-life"), context.Background(), lifecycleConfig(), fail)
}

// slowToStop is a part that takes a while to wind down once told to, as
// a queue draining its socket might: serve must wait for it all the same.
var slowToStop = part{"slow", func(ctx context.Context) error {
	<-ctx.Done()
	<-time.After(200 * time.Millisecond)
	return nil
}}

// TestPartFailureStopsEverything: one part failing for real (a
// completion queue, closed under its worker) stops every other part, the rules come down,
// and serve returns the failure only after every goroutine it started has
// ended.
func TestPartFailureStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	err, rules := runFailing(t, func(g *gateway) {
		g.parts = append(g.parts, slowToStop)
		g.queues[3].Close()
	})
	// Closed before its worker ran or while it ran, either way it failed.
	if err == nil || !strings.HasPrefix(err.Error(), "completion queue 10: ") {
		t.Fatalf("serve returned %v, want completion queue 10's failure", err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after a failure:\n%s", rules)
	}
}

// TestPartStoppingEarlyIsAFailure: a part that returns nil while the
// gateway still serves has stopped doing its job; that stops the gateway
// too.
func TestPartStoppingEarlyIsAFailure(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	err, rules := runFailing(t, func(g *gateway) {
		g.parts = append(g.parts, part{"quitter", func(context.Context) error { return nil }})
	})
	if err == nil || err.Error() != "quitter: stopped unexpectedly" {
		t.Fatalf("serve returned %v, want the quitter's early stop", err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after a failure:\n%s", rules)
	}
}

// TestServeStopsOnCancel: the ordinary stop returns nil, with every
// goroutine gone and the rules removed.
func TestServeStopsOnCancel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	err, rules := serveIn(t, nstest.New(t, "sggw-life"), ctx, lifecycleConfig(), func(g *gateway) {
		var names []string
		for _, p := range g.parts {
			names = append(names, p.name)
		}
		want := []string{"engine", "telemetry", "SYN queue 7", "SYN queue 8", "completion queue 9", "completion queue 10", "metrics", "rules watch", "backend learner"}
		if !slices.Equal(names, want) {
			t.Errorf("parts %q, want %q", names, want)
		}
		g.parts = append(g.parts, slowToStop)
		cancel()
	})
	if err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after stop:\n%s", rules)
	}
}

// TestMetricsFailureKeepsProtecting: the metrics server is the one part
// whose failure stops nothing: it is logged, and the rules stay in place
// until the gateway is told to stop.
func TestMetricsFailureKeepsProtecting(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ns := nstest.New(t, "sggw-life")
	var logs syncbuf.Buffer
	cfg := lifecycleConfig()
	cfg.Logger = zerolog.New(&logs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	protecting := make(chan bool, 1)
	err, _ := serveIn(t, ns, ctx, cfg, func(g *gateway) {
		g.metrics.Close()
		go func() {
			protecting <- poll.Stays(500*time.Millisecond, func() bool { return strings.Contains(iptablesSave(t, ns), "SYNGUARD") })
			cancel()
		}()
	})
	if !<-protecting {
		t.Fatalf("the rules came down (serve: %v) after the metrics server failed", err)
	}
	if err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
	if !strings.Contains(logs.String(), `"event":"metrics_failed"`) {
		t.Fatalf("no metrics_failed event in:\n%s", logs.String())
	}
}
