package lab

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

var loopback = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)

// A greeting client gets the greeting, times it, and leaves the server
// nothing to wait for; closing the server ends connections still open.
func TestProbeGreeting(t *testing.T) {
	b, err := ServeGreeting(context.Background(), nil, loopback)
	if err != nil {
		t.Fatal(err)
	}
	r := ProbeGreeting(context.Background(), nil, b.Addr(), time.Second)
	if !r.OK || r.Err != nil {
		t.Fatalf("probe: ok %v, %v", r.OK, r.Err)
	}
	if r.Bytes != int64(len(Greeting)) || r.FirstByte <= 0 || r.FirstByte < r.Handshake || r.Total < r.FirstByte {
		t.Fatalf("probe: %d bytes, handshake %v, first byte %v, total %v", r.Bytes, r.Handshake, r.FirstByte, r.Total)
	}

	// A client that stays connected must not keep Close waiting.
	c, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, len(Greeting))); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waiting for an open connection after 5 s")
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after Close the client read %d bytes, %v; want EOF", n, err)
	}
	if got := b.Accepted(); got != 2 {
		t.Fatalf("accepted %d connections, want 2", got)
	}
}

// A server that greets wrongly, or not at all, fails the probe.
func TestProbeGreetingFails(t *testing.T) {
	for _, tt := range []struct {
		name  string
		serve func(net.Conn)
		want  string
	}{
		{"other greeting", func(c net.Conn) { _, _ = io.WriteString(c, strings.Repeat("x", len(Greeting))) }, "want"},
		{"silent", func(net.Conn) {}, "timeout"},
		{"closes", func(c net.Conn) { _ = c.Close() }, "EOF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", loopback.String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					tt.serve(c)
					defer c.Close()
				}
			}()
			target := ln.Addr().(*net.TCPAddr).AddrPort()
			r := ProbeGreeting(context.Background(), nil, target, 300*time.Millisecond)
			if r.OK || r.Err == nil {
				t.Fatal("probe succeeded")
			}
			msg := r.Err.Error()
			if tt.want == "timeout" {
				if !errors.Is(r.Err, os.ErrDeadlineExceeded) && !errors.Is(r.Err, context.DeadlineExceeded) {
					t.Fatalf("error %v, want a timeout", r.Err)
				}
			} else if !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q, want one with %q", msg, tt.want)
			}
		})
	}
}
