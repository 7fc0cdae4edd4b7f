package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// Handler returns the backend's routes:
//
//	GET /bytes/N  N bytes of NewContentReader(N), with Content-Length
//	GET /healthz  "ok"
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok")
	})
	return mux
}

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 || n > MaxContentBytes {
		http.Error(w, fmt.Sprintf("length must be an integer in [0, %d]", MaxContentBytes), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	if r.Method == http.MethodHead {
		return
	}
	buf := make([]byte, 64<<10)
	// A failed write means the client went away; nothing to report to it.
	_, _ = io.CopyBuffer(writerOnly{w}, NewContentReader(n), buf)
}

// writerOnly hides the ResponseWriter's ReaderFrom so CopyBuffer uses our
// larger buffer.
type writerOnly struct{ io.Writer }

// ServeHTTP serves the backend's routes on ln until ctx is done, then
// closes ln and returns nil. It is what `synguard lab serve` runs.
func ServeHTTP(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Listen opens a TCP listener on addr inside ns (nil: the caller's
// namespace). backlog > 0 sets the listen backlog, e.g. a tiny one to make
// a busy backend that drops SYNs when its accept queue is full; 0 keeps
// Go's default (net.core.somaxconn).
func Listen(ns *netns.NS, addr netip.AddrPort, backlog int) (net.Listener, error) {
	var ln net.Listener
	err := do(ns, func() (err error) {
		if backlog <= 0 {
			ln, err = net.Listen("tcp", addr.String())
			return err
		}
		ln, err = listenBacklog(addr, backlog)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

func listenBacklog(addr netip.AddrPort, backlog int) (net.Listener, error) {
	family, sa := sockaddr(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close() // FileListener holds its own duplicate
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return nil, err
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	a := ap.Addr().Unmap()
	if a.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
}

// Backend is a lab backend serving in-process: HTTP (ServeBackend) or a
// greeting (ServeGreeting).
type Backend struct {
	addr     netip.AddrPort
	accepted atomic.Int64
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
}

// ServeBackend listens on addr inside ns and serves ServeHTTP until ctx is
// done or Close is called.
func ServeBackend(ctx context.Context, ns *netns.NS, addr netip.AddrPort) (*Backend, error) {
	return ServeBackendBacklog(ctx, ns, addr, 0)
}

// ServeBackendBacklog is ServeBackend with a listen backlog (see Listen).
func ServeBackendBacklog(ctx context.Context, ns *netns.NS, addr netip.AddrPort, backlog int) (*Backend, error) {
	ln, err := Listen(ns, addr, backlog)
	if err != nil {
		return nil, err
	}
	return startBackend(ctx, ln, ServeHTTP), nil
}

// startBackend runs serve on ln until ctx is done or Close is called.
func startBackend(ctx context.Context, ln net.Listener, serve func(context.Context, net.Listener) error) *Backend {
	ctx, cancel := context.WithCancel(ctx)
	b := &Backend{
		addr:   ln.Addr().(*net.TCPAddr).AddrPort(),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	b.addr = netip.AddrPortFrom(b.addr.Addr().Unmap(), b.addr.Port())
	go func() {
		defer close(b.done)
		b.err = serve(ctx, &countingListener{Listener: ln, n: &b.accepted})
	}()
	return b
}

// Addr is the address the backend listens on (with the real port when
// ServeBackend was given port 0).
func (b *Backend) Addr() netip.AddrPort { return b.addr }

// Accepted counts the connections the backend accepted.
func (b *Backend) Accepted() int64 { return b.accepted.Load() }

// Close stops the backend, closing its listener and connections, and
// returns the error that stopped it, if any other than being closed.
func (b *Backend) Close() error {
	b.cancel()
	<-b.done
	return b.err
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// do runs fn inside ns, or directly when ns is nil.
func do(ns *netns.NS, fn func() error) error {
	if ns == nil {
		return fn()
	}
	return ns.Do(fn)
}
