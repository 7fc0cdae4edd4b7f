package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
)

// lifecycleConfig is a gateway for one service in a namespace of its
// own, with the metrics endpoint on and backend options fixed: the
// learner's probes would leave the namespace from a goroutine that is not
// in it.
func lifecycleConfig() Config {
	return Config{
		Services:    []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:80")},
		Mode:        engine.ModeAlways,
		Queue:       7,
		Queues:      2,
		MetricsAddr: "127.0.0.1:0",
		Backend:     &engine.BackendOptions{MSS: 1460, WindowScale: 7, SACKPermitted: true},
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

// runFailing opens and installs a gateway in a fresh namespace, starts
// serving it with a context nobody cancels, and calls fail once every
// part runs: only a part's failure can end serve. It returns serve's
// error and the namespace's rules afterwards.
func runFailing(t *testing.T, fail func(g *gateway)) (error, string) {
	t.Helper()
	ns := nstest.New(t, "sggw-life")
	var serveErr error
	err := ns.Do(func() error {
		g, err := open(lifecycleConfig())
		if err != nil {
			return err
		}
		defer g.close()
		rules, err := g.install(context.Background())
		if err != nil {
			return err
		}
		fail(g)
		serveErr = g.serve(context.Background(), rules)
		if left := projectGoroutines(); len(left) > 0 {
			return fmt.Errorf("serve returned with goroutines still running:\n%s", strings.Join(left, "\n\n"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ns.Output(context.Background(), "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	return serveErr, rules
}

// slowToStop is a part that takes a while to wind down once told to, as
// a queue draining its socket might: serve must wait for it all the same.
var slowToStop = part{"slow", func(ctx context.Context) error {
	<-ctx.Done()
	<-time.After(200 * time.Millisecond)
	return nil
}}

// TestPartFailureStopsEverything: one part failing for real (a queue,
// closed under its worker) stops every other part, the rules come down,
// and serve returns the failure only after every goroutine it started has
// ended.
func TestPartFailureStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	err, rules := runFailing(t, func(g *gateway) {
		g.parts = append(g.parts, slowToStop)
		g.queues[1].Close()
	})
	// Closed before its worker ran or while it ran, either way it failed.
	if err == nil || !strings.HasPrefix(err.Error(), "queue 8: ") {
		t.Fatalf("serve returned %v, want queue 8's failure", err)
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
	ns := nstest.New(t, "sggw-life")
	ctx, cancel := context.WithCancel(context.Background())
	var serveErr error
	if err := ns.Do(func() error {
		g, err := open(lifecycleConfig())
		if err != nil {
			return err
		}
		defer g.close()
		rules, err := g.install(ctx)
		if err != nil {
			return err
		}
		if n := len(g.parts); n != 5 {
			return errors.New("want 5 parts: engine, telemetry, 2 queues, metrics")
		}
		g.parts = append(g.parts, slowToStop)
		cancel()
		serveErr = g.serve(ctx, rules)
		if left := projectGoroutines(); len(left) > 0 {
			return fmt.Errorf("serve returned with goroutines still running:\n%s", strings.Join(left, "\n\n"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if serveErr != nil {
		t.Fatalf("serve after cancel: %v", serveErr)
	}
	rules, err := ns.Output(context.Background(), "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after stop:\n%s", rules)
	}
}

// TestMetricsFailureKeepsProtecting: the metrics server is the one part
// whose failure stops nothing: it is logged, and protection goes on until
// the gateway is told to stop.
func TestMetricsFailureKeepsProtecting(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ns := nstest.New(t, "sggw-life")
	var logs syncBuffer
	cfg := lifecycleConfig()
	cfg.Logger = zerolog.New(&logs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var served atomic.Bool
	stillServing := make(chan bool, 1)
	var serveErr error
	if err := ns.Do(func() error {
		g, err := open(cfg)
		if err != nil {
			return err
		}
		defer g.close()
		rules, err := g.install(ctx)
		if err != nil {
			return err
		}
		g.metrics.Close()
		go func() {
			stillServing <- poll.Stays(500*time.Millisecond, func() bool { return !served.Load() })
			cancel()
		}()
		serveErr = g.serve(ctx, rules)
		served.Store(true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !<-stillServing {
		t.Fatalf("serve returned (%v) after the metrics server failed", serveErr)
	}
	if serveErr != nil {
		t.Fatalf("serve after cancel: %v", serveErr)
	}
	if !strings.Contains(logs.String(), `"event":"metrics_failed"`) {
		t.Fatalf("no metrics_failed event in:\n%s", logs.String())
	}
}

// syncBuffer is a bytes.Buffer the gateway's goroutines may log to at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
