package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/telemetry"
)

// statusTimeout bounds one read of /api/stats: a synguard under a flood
// still answers in milliseconds; one that takes seconds is not answering.
const statusTimeout = 3 * time.Second

// minStatusInterval keeps --watch from polling faster than the figures
// change: they are sampled once a second.
const minStatusInterval = 100 * time.Millisecond

// clearScreen moves the cursor home and clears the terminal.
const clearScreen = "\x1b[H\x1b[2J"

// defaultMetricsAddr is the metrics address synguard run uses when none
// is given: status looks there by default.
func defaultMetricsAddr() string {
	var f gatewayFlags
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	f.register(fs)
	return fs.Lookup("metrics").DefValue
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(stdout, "status")
	addr := fs.String("metrics", defaultMetricsAddr(), "the `HOST:PORT` synguard run serves its metrics on (its --metrics)")
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted (Ctrl-C)")
	interval := fs.Duration("interval", time.Second, "how often --watch refreshes")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *addr == "" {
		return usagef("status: no metrics address: give --metrics HOST:PORT, the address synguard run was started with (--metrics)")
	}
	if err := checkHostPort(*addr); err != nil {
		return usagef("status: --metrics %q: %v", *addr, err)
	}
	if *interval < minStatusInterval {
		return usagef("status: --interval %v: want %v or more", *interval, minStatusInterval)
	}
	st := statusView{addr: *addr, client: &http.Client{Timeout: statusTimeout}, loc: time.Local}
	if !*watch {
		return st.once(ctx, stdout)
	}
	return st.watch(ctx, stdout, *interval, isTerminal(stdout))
}

// checkHostPort accepts HOST:PORT with a host name or an IP address and a
// port number.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want HOST:PORT, e.g. 127.0.0.1:9847")
	}
	if host == "" {
		return errors.New("no host: want HOST:PORT, e.g. 127.0.0.1:9847")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	return nil
}

// statusView reads a running synguard's figures and prints them.
type statusView struct {
	addr   string
	client *http.Client
	loc    *time.Location // times are shown in it
}

// fetch reads /api/stats once.
func (s statusView) fetch(ctx context.Context) (telemetry.StatsView, error) {
	v, err := telemetry.FetchStats(ctx, s.client, s.addr)
	if errors.Is(err, telemetry.ErrUnreachable) {
		return v, fmt.Errorf("no synguard answering on %s (is it running with --metrics?)", s.addr)
	}
	return v, err
}

func (s statusView) once(ctx context.Context, w io.Writer) error {
	v, err := s.fetch(ctx)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	renderStatus(&b, s.addr, v, s.loc)
	_, err = w.Write(b.Bytes())
	return err
}

// watch prints the table every interval until ctx is done: in place on a
// terminal, as successive tables separated by a blank line elsewhere. The
// first read must succeed; a later failure is shown and retried, so the
// view outlives a restart.
func (s statusView) watch(ctx context.Context, w io.Writer, interval time.Duration, tty bool) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for frame := 0; ; frame++ {
		var b bytes.Buffer
		switch {
		case tty:
			b.WriteString(clearScreen)
		case frame > 0:
			b.WriteByte('\n')
		}
		v, err := s.fetch(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && frame == 0:
			return err
		case err != nil:
			fmt.Fprintf(&b, "%s  %v; retrying every %v\n", time.Now().In(s.loc).Format(time.TimeOnly), err, interval)
		default:
			renderStatus(&b, s.addr, v, s.loc)
		}
		if _, err := w.Write(b.Bytes()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// isTerminal reports whether w is a terminal, where the view refreshes in
// place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// renderStatus writes the status table: a line per service, the attacks
// in progress with their top sources, the queues and the XDP path.
func renderStatus(w io.Writer, addr string, v telemetry.StatsView, loc *time.Location) {
	fmt.Fprintf(w, "synguard on %s · up %s · %s\n\n", addr, fmtDuration(v.UptimeSeconds), v.Time.In(loc).Format("2006-01-02 15:04:05 MST"))

	svc := table{head: []string{"SERVICE", "MODE", "HALF-OPEN", "SYN/s", "SYN-ACK/s", "VALID/s", "INVALID/s", "HAND-OFFS/s", "BACKEND"}, left: map[int]bool{0: true, 1: true, 8: true}}
	for _, s := range v.Services {
		svc.add(s.Service, s.Mode, fmtInt(uint64(max(s.HalfOpen, 0))), fmtRate(s.Rates.SYN), fmtRate(s.Rates.SYNACK),
			fmtRate(s.Rates.CookieValid), fmtRate(s.Rates.CookieInvalid), fmtRate(s.Rates.HandedOff), backendState(s, v.Time))
	}
	svc.write(w, "")

	for _, s := range v.Services {
		a := s.Attack
		if a == nil {
			continue
		}
		fmt.Fprintf(w, "\nATTACK on %s since %s (%s, %s)\n  peak %s SYN/s · %s SYNs · %s handed off · completion %s\n",
			s.Service, a.Started.In(loc).Format(time.TimeOnly), fmtDuration(a.DurationSeconds), a.Reason,
			fmtRate(a.PeakSYNRate), fmtInt(a.SYNs), fmtInt(a.HandedOff), fmtPct(a.Completion))
		if len(a.TopSources) == 0 {
			fmt.Fprintln(w, "  no source figures yet")
			continue
		}
		fmt.Fprintf(w, "  spread %.2f: %s\n", a.Spread, a.Hint)
		src := table{head: []string{"PREFIX", "SYNS", "COMPLETED"}, left: map[int]bool{0: true}}
		for _, p := range a.TopSources {
			src.add(p.Prefix, fmtInt(p.SYNs), fmtInt(p.Completed))
		}
		src.write(w, "  ")
	}

	if len(v.Queues) > 0 {
		fmt.Fprintln(w)
		q := table{head: []string{"QUEUE", "KIND", "PACKETS/s", "PACKETS", "KERNEL DROPS", "ENOBUFS"}, left: map[int]bool{1: true}}
		for _, qv := range v.Queues {
			q.add(strconv.Itoa(int(qv.Queue)), qv.Kind, fmtRate(qv.ReceivedRate), fmtInt(qv.Received), fmtInt(qv.KernelDrops), fmtInt(qv.ENOBUFS))
		}
		q.write(w, "")
	}
	if len(v.XDP) > 0 {
		parts := make([]string, len(v.XDP))
		for i, x := range v.XDP {
			parts[i] = fmt.Sprintf("%s %s (%s/s)", x.Action, fmtInt(x.Packets), fmtRate(x.Rate))
		}
		fmt.Fprintf(w, "\nXDP: %s\n", strings.Join(parts, " · "))
	}
}

// backendState is the backend column: up, down for how long and why, or
// unknown before the first verdict.
func backendState(s telemetry.ServiceView, now time.Time) string {
	b := s.Backend
	if b.Up == nil {
		return "?"
	}
	state := "up"
	if !*b.Up {
		state = "DOWN"
	}
	if b.Since != nil && !*b.Up {
		state += " " + fmtDuration(now.Sub(*b.Since).Seconds())
	}
	if !*b.Up && b.Reason != "" {
		state += ": " + b.Reason
	}
	return state
}

// table aligns columns: text on the left, figures on the right.
type table struct {
	head []string
	left map[int]bool // left-aligned columns
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer, indent string) {
	width := make([]int, len(t.head))
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range append([][]string{t.head}, t.rows...) {
		var line strings.Builder
		line.WriteString(indent)
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				line.WriteString("  ")
			}
			if t.left[i] {
				line.WriteString(c + pad)
			} else {
				line.WriteString(pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
	}
}

// fmtRate prints a rate as the dashboard does: whole numbers from 10 up,
// one decimal below unless it is whole.
func fmtRate(v float64) string {
	switch {
	case v >= 9.95: // 9.96 rounds to 10, not 10.0
		return fmtInt(uint64(v + 0.5))
	case v > 0 && v != math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v > 0:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return "0"
}

// fmtInt groups thousands: 1,012,345.
func fmtInt(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtPct(ratio float64) string {
	p := 100 * ratio
	switch {
	case p > 0 && p < 1:
		return strconv.FormatFloat(p, 'f', 2, 64) + "%"
	case p >= 10:
		return strconv.FormatFloat(p, 'f', 0, 64) + "%"
	}
	return strconv.FormatFloat(p, 'f', 1, 64) + "%"
}

// fmtDuration prints seconds as 42s, 3m05s or 2h07m.
func fmtDuration(seconds float64) string {
	s := int64(max(seconds, 0) + 0.5)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
}
