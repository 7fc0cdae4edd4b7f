// Package backendinfo learns the TCP options a backend announces.
//
// The gateway tells each client the backend's MSS, window scale and SACK
// support in its cookie SYN-ACK; after the hand-off the two ends talk
// directly, so these must match what the backend really uses. Kernel
// SYNPROXY makes operators configure them by hand, and a wrong window
// scale is its most common failure. Probe opens a real TCP connection to
// the backend and reads the negotiated values from TCP_INFO.
package backendinfo

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options are what a backend announced in its SYN-ACK.
type Options struct {
	MSS           uint16
	WindowScale   int8 // -1 when the backend does not scale
	SACKPermitted bool
}

// tcpi_options bits (include/uapi/linux/tcp.h); x/sys does not name them.
const (
	optTimestamps  = 1
	optSACK        = 2
	optWindowScale = 4
)

// timestampsLen is what the timestamps option takes from every segment,
// and so from the MSS TCP_INFO reports when timestamps are on.
const timestampsLen = 12

// Probe connects to backend and reports the options it negotiated. A
// non-zero mark is set on the probe socket (SO_MARK), which keeps it out of
// synguard's own queue when the backend is on this host.
func Probe(ctx context.Context, backend netip.AddrPort, mark uint32, timeout time.Duration) (Options, error) {
	d := net.Dialer{Timeout: timeout}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
			}); err != nil {
				return err
			}
			return serr
		}
	}
	conn, err := d.DialContext(ctx, "tcp", backend.String())
	if err != nil {
		return Options{}, fmt.Errorf("probe backend %s: %w", backend, err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return Options{}, fmt.Errorf("probe backend %s: %w", backend, err)
	}
	var (
		info *unix.TCPInfo
		ierr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return Options{}, fmt.Errorf("probe backend %s: %w", backend, err)
	}
	if ierr != nil {
		return Options{}, fmt.Errorf("probe backend %s: read TCP_INFO: %w", backend, ierr)
	}
	return fromTCPInfo(info), nil
}

// fromTCPInfo extracts the peer's options. struct tcp_info keeps the
// window scales in the byte after tcpi_options (low nibble: the peer's,
// which we send with; high nibble: ours), which x/sys leaves as padding.
func fromTCPInfo(info *unix.TCPInfo) Options {
	raw := (*[8]byte)(unsafe.Pointer(info))
	o := Options{WindowScale: -1, SACKPermitted: info.Options&optSACK != 0}
	if info.Options&optWindowScale != 0 {
		o.WindowScale = int8(raw[6] & 0x0f)
	}
	mss := info.Snd_mss
	if info.Options&optTimestamps != 0 {
		mss += timestampsLen
	}
	o.MSS = uint16(min(mss, 0xffff))
	return o
}
