package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/synguard/synguard/lab/netns"
)

// Greeting is what a greeting backend writes first, as an SMTP server
// does.
const Greeting = "220 synguard lab ready\r\n"

// ServeGreeting listens on addr inside ns and serves, until ctx is done
// or Close is called, a protocol whose server speaks first (SMTP, SSH,
// FTP, MySQL): it writes Greeting the moment it accepts a connection and
// closes the connection once the client has.
//
// Such a client sends nothing after its ACK, so the greeting comes only
// once the backend took the gateway's ACK of its SYN-ACK: a proxy whose
// ACK the backend rejects holds it back until the backend sends its
// SYN-ACK again, a second later.
func ServeGreeting(ctx context.Context, ns *netns.NS, addr netip.AddrPort) (*Backend, error) {
	ln, err := Listen(ns, addr, 0)
	if err != nil {
		return nil, err
	}
	return startBackend(ctx, ln, serveGreeting), nil
}

func serveGreeting(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var (
		mu    sync.Mutex
		conns = make(map[net.Conn]bool)
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				_ = c.Close()
			}()
			_ = c.SetDeadline(time.Now().Add(greetingIdle))
			if _, err := io.WriteString(c, Greeting); err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// greetingIdle bounds a greeting backend's connection, as a real server's
// idle timeout does.
const greetingIdle = 30 * time.Second

// ProbeGreeting connects to target from inside ns (nil: the caller's
// namespace), sends nothing, and reads the server's Greeting: a client of
// a protocol whose server speaks first. FirstByte is connect() until the
// greeting's first byte came, Total until all of it was read and checked.
// Everything is bounded by timeout (DefaultProbeTimeout when not
// positive) and ctx.
func ProbeGreeting(ctx context.Context, ns *netns.NS, target netip.AddrPort, timeout time.Duration) ProbeResult {
	return probe(ctx, ns, target, timeout, readGreeting)
}

func readGreeting(conn net.Conn, _ netip.AddrPort) (int64, error) {
	buf := make([]byte, len(Greeting))
	n, err := io.ReadFull(conn, buf)
	if err != nil {
		return int64(n), fmt.Errorf("read greeting: %w", err)
	}
	if string(buf) != Greeting {
		return int64(n), fmt.Errorf("greeting %q, want %q", buf, Greeting)
	}
	return int64(n), nil
}
