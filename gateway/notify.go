package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/telemetry"
)

// notifier tells the service manager (systemd, Type=notify) how the
// gateway is doing, over the socket named by NOTIFY_SOCKET: READY=1 once
// the rules are live, RELOADING=1 and READY=1 around a reload, STOPPING=1
// as the stop begins, WATCHDOG=1 while the packet path is healthy, and a
// STATUS= line for `systemctl status`. Without NOTIFY_SOCKET (synguard
// not started by systemd) every call does nothing.
type notifier struct {
	log zerolog.Logger
	// send writes one notification; daemon.SdNotify but in tests.
	send func(state string) error
	// status is the STATUS= line of the last ready, for the watchdog to
	// restore after an unhealthy spell; a reload may set it meanwhile.
	status atomic.Pointer[string]
	// xdp describes the fast path's links for the status line: read once,
	// before serve, as nothing detaches them yet.
	xdp string
	// unhealthy is why the last watchdog check failed; nil while the
	// packet path is healthy. Owned by the watchdog goroutine.
	unhealthy error
}

func newNotifier(log zerolog.Logger) *notifier {
	return &notifier{log: log, send: func(state string) error {
		// false: children (iptables-restore) inherit NOTIFY_SOCKET, but
		// systemd takes notifications from the main process only.
		_, err := daemon.SdNotify(false, state)
		return err
	}}
}

// notify sends one notification of one or more VAR=value lines. A
// failure costs systemd its view of synguard, not protection: logged.
func (n *notifier) notify(lines ...string) {
	if err := n.send(strings.Join(lines, "\n")); err != nil {
		n.log.Warn().Err(err).Str(telemetry.FieldEvent, telemetry.EventNotifyFailed).
			Str("state", lines[0]).Msg("could not notify the service manager")
	}
}

// ready says synguard protects its services as status says: at start
// once the rules are installed, and at the end of a reload, applied or
// rejected (the configuration in force is then a whole one either way).
//
// A reload calls n.reloading() as it begins and n.ready(g.status()) once
// the new configuration is in force or rejected.
func (n *notifier) ready(status string) {
	n.status.Store(&status)
	n.notify(daemon.SdNotifyReady, "STATUS="+status)
}

// reloading says a reload began. The reload calls ready when it ends;
// between the two systemd shows the unit as reloading. MONOTONIC_USEC is
// when the reload began, which systemd (253 and later) requires to tell
// this reload from an earlier one.
func (n *notifier) reloading() {
	n.notify(daemon.SdNotifyReloading, "MONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10),
		"STATUS=reloading the configuration")
}

// stopping says the stop began: the rules come down next.
func (n *notifier) stopping() {
	n.notify(daemon.SdNotifyStopping, "STATUS=stopping: removing the rules")
}

// monotonicUsec reads CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

// watchdog sends WATCHDOG=1 at every tick at which check finds the packet
// path healthy, until ctx is done. While it is not, nothing is sent, so
// systemd's watchdog expires and it restarts synguard (Restart=) unless
// the path recovers first. Each unhealthy spell is logged once, with its
// cause, and shown in the status line until the path recovers.
func (n *notifier) watchdog(ctx context.Context, tick <-chan time.Time, check func(time.Time) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick:
			n.beat(check(now))
		}
	}
}

// beat is one watchdog tick with the health check's result.
func (n *notifier) beat(err error) {
	switch {
	case err == nil && n.unhealthy == nil:
		n.notify(daemon.SdNotifyWatchdog)
	case err == nil:
		n.log.Info().Str(telemetry.FieldEvent, telemetry.EventWatchdogRecovered).
			Str("was", n.unhealthy.Error()).Msg("packet path healthy again; watchdog resumed")
		n.unhealthy = nil
		status := "protecting"
		if p := n.status.Load(); p != nil {
			status = *p
		}
		n.notify(daemon.SdNotifyWatchdog, "STATUS="+status)
	case n.unhealthy == nil:
		n.unhealthy = err
		n.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventWatchdogUnhealthy).
			Msg("packet path unhealthy; watchdog withheld, systemd restarts synguard unless it recovers")
		n.notify("STATUS=unhealthy: " + err.Error())
	}
}

// watchdogParts returns the part that feeds systemd's watchdog at half
// its interval (WATCHDOG_USEC), or none when systemd asked for none.
func (g *gateway) watchdogParts() []part {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		g.cfg.Logger.Warn().Err(err).Str(telemetry.FieldEvent, telemetry.EventNotifyFailed).
			Msg("bad watchdog settings from the service manager; no watchdog")
		return nil
	}
	if interval <= 0 {
		return nil
	}
	every := interval / 2
	// The engine's heartbeat and the fast path's sync come at least every
	// engine.QuietControlTick: a shorter watchdog must not take that wait
	// for a stall.
	h := g.pathHealth(max(every, 2*engine.QuietControlTick))
	return []part{{"watchdog", func(ctx context.Context) error {
		t := time.NewTicker(every)
		defer t.Stop()
		return g.notify.watchdog(ctx, t.C, h.check)
	}}}
}

// ready tells systemd that the rules are live: at the end of install,
// once the start event is logged. The watchdog, when systemd wants one,
// runs from here on as one of the parts.
func (g *gateway) ready() {
	if g.fast != nil {
		var b strings.Builder
		for _, a := range g.fast.prog.Attached() {
			fmt.Fprintf(&b, " %s %s", a.Interface, a.Mode)
		}
		g.notify.xdp = "; XDP" + b.String()
	}
	g.parts = append(g.parts, g.watchdogParts()...)
	g.notify.ready(g.status())
}

// status is the STATUS= line of a gateway at work, e.g. "protecting
// 192.0.2.10:80, [2001:db8::10]:443; mode auto; SYN queue 0, completion
// queue 1; XDP eth0 native".
func (g *gateway) status() string {
	const listed = 4
	cfg := g.cfg
	var b strings.Builder
	b.WriteString("protecting ")
	for i, s := range cfg.Services {
		if i == listed {
			fmt.Fprintf(&b, " and %d more", len(cfg.Services)-listed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s.Addr.String())
	}
	fw := cfg.FirewallConfig()
	fmt.Fprintf(&b, "; mode %s; %s, %s", cfg.Mode, queuesName("SYN", fw.SYNQueues()), queuesName("completion", fw.CompletionQueues()))
	b.WriteString(g.notify.xdp)
	return b.String()
}

// pathHealth decides whether the packet path works, for the watchdog:
// the engine's control loop ticks, every queue is bound to its worker's
// socket and a worker whose queue fills hands out verdicts, and the XDP
// fast path, while attached, is kept in step with the engine. The
// sources are functions so tests can stall each one.
type pathHealth struct {
	// maxAge is how old the engine's heartbeat and the fast path's last
	// sync may be: both run every 100 ms, or every second while quiet.
	maxAge time.Duration
	// since stands in for a heartbeat not yet seen: the check's start.
	since     time.Time
	heartbeat func() time.Time // engine.LastControl
	// fastSynced is when the fast path was last brought in step (zero
	// before the first time), and false once it was detached after a
	// failure and the NFQUEUE path took every packet, as designed. Nil
	// without XDP.
	fastSynced func() (time.Time, bool)
	kernel     func() ([]nfq.KernelQueueStats, error) // the gateway's queueStats.Read
	queues     []queueProbe
}

// queueProbe is one queue as the health check sees it, with what the
// previous check read.
type queueProbe struct {
	num     uint16
	name    string        // queueName: "SYN queue 0"
	port    uint32        // the netlink port id of the worker's socket
	batches func() uint64 // batches the worker has handled
	// held is how many packets the worker holds without a verdict on
	// purpose (early data, nfq.Queue.Held): they wait, but not on it.
	held func() int
	seen bool
	prev struct {
		batches uint64
		lastID  uint32
		waiting uint32
	}
}

func (g *gateway) pathHealth(maxAge time.Duration) *pathHealth {
	h := &pathHealth{maxAge: maxAge, since: time.Now(), heartbeat: g.eng.LastControl, kernel: g.queueStats.Read}
	for i, q := range g.queues {
		num, kind := g.queueOf(i)
		h.queues = append(h.queues, queueProbe{num: num, name: queueName(num, kind), port: q.PortID(),
			batches: func() uint64 { return q.Stats().Batches }, held: q.Held})
	}
	if f := g.fast; f != nil {
		h.fastSynced = f.lastSync
	}
	return h
}

// check reports what is wrong with the packet path at now, nil when
// nothing is.
//
// A queue's worker is stuck when packets were waiting at the previous
// check, more arrived since, and it finished no batch in between. A
// worker that runs hands a waiting packet its verdict within a batch, in
// microseconds; packets that wait without news (held back while the
// queue was set up) are released only by the next arrival, which a
// working worker then handles as a batch.
func (h *pathHealth) check(now time.Time) error {
	if age := now.Sub(latest(h.heartbeat(), h.since)); age > h.maxAge {
		return fmt.Errorf("the engine's control loop last ran %v ago", age.Round(time.Millisecond))
	}
	if h.fastSynced != nil {
		if at, attached := h.fastSynced(); attached {
			if age := now.Sub(latest(at, h.since)); age > h.maxAge {
				return fmt.Errorf("the XDP fast path was last brought in step with the engine %v ago", age.Round(time.Millisecond))
			}
		}
	}
	if len(h.queues) == 0 {
		return nil
	}
	// Held packets counted before and after the kernel's figures: a
	// release between the reads must not pass for a stuck worker.
	heldBefore := make([]int, len(h.queues))
	for i, q := range h.queues {
		heldBefore[i] = q.heldNow()
	}
	kernel, err := h.kernel()
	if err != nil {
		return err
	}
	var errs []error
	for i := range h.queues {
		errs = append(errs, h.queues[i].check(kernel, heldBefore[i]))
	}
	return errors.Join(errs...)
}

func (q *queueProbe) heldNow() int {
	if q.held == nil {
		return 0
	}
	return q.held()
}

func (q *queueProbe) check(kernel []nfq.KernelQueueStats, heldBefore int) error {
	var k *nfq.KernelQueueStats
	for i := range kernel {
		if kernel[i].Queue == q.num {
			k = &kernel[i]
		}
	}
	switch {
	case k == nil:
		q.seen = false
		return fmt.Errorf("%s is bound to no socket", q.name)
	case k.PortID != q.port:
		q.seen = false
		return fmt.Errorf("%s is bound to netlink port %d, not to its worker's %d", q.name, k.PortID, q.port)
	}
	batches := q.batches()
	waiting := int64(k.Waiting) - int64(max(heldBefore, q.heldNow()))
	stuck := q.seen && q.prev.waiting > 0 && k.LastID != q.prev.lastID && batches == q.prev.batches
	q.seen = true
	q.prev.batches, q.prev.lastID, q.prev.waiting = batches, k.LastID, uint32(max(waiting, 0))
	if stuck {
		return fmt.Errorf("%s: %d packets wait for a verdict (besides those held on purpose) and its worker has handled none since the last check", q.name, max(waiting, 0))
	}
	return nil
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// queuesName is r for the STATUS= line: "SYN queue 0" or "SYN queues
// 0-3".
func queuesName(kind string, r firewall.QueueRange) string {
	if r.First == r.Last {
		return fmt.Sprintf("%s queue %d", kind, r.First)
	}
	return fmt.Sprintf("%s queues %d-%d", kind, r.First, r.Last)
}
