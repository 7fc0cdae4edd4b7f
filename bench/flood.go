package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/rawsock"
)

// Flood bounds and defaults.
const (
	MaxFloodCount    = 50_000_000
	MaxFloodDuration = 10 * time.Minute
	MaxFloodRate     = 10_000_000
	DefaultBatch     = 64
	MaxBatch         = 1024 // sendmmsg takes at most UIO_MAXIOV messages

	// pacedBatchPeriod is about how much time one batch covers at a
	// configured rate.
	pacedBatchPeriod = time.Millisecond
	// maxConsecutiveErrors stops a flood whose every send fails (no route,
	// a firewall rejecting it) instead of spinning until its bounds.
	maxConsecutiveErrors = 1000
	// sendTimeout bounds one blocked sendmmsg so that the flood's own
	// bounds and its context are checked.
	sendTimeout = 100 * time.Millisecond
	sendBuffer  = 4 << 20
)

// Kind is what a flood sends: SYNs, or forged ACKs that belong to no
// connection.
type Kind string

// The kinds of flood.
const (
	// KindSYN is Linux-like SYNs (see floodGen): the SYN flood.
	KindSYN Kind = "syn"
	// KindACK is forged ACKs: the ACK flag alone, random sequence and
	// acknowledgement numbers, as a Linux client's handshake ACK looks
	// otherwise (timestamps, window 502 at scale 7).
	KindACK Kind = "ack"
)

// ParseKind checks a kind's name; empty is KindSYN.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case "", KindSYN:
		return KindSYN, nil
	case KindACK:
		return k, nil
	}
	return "", fmt.Errorf("unknown packet kind %q (want syn or ack)", s)
}

// FloodConfig describes one flood.
type FloodConfig struct {
	// Kind is what to send (KindSYN when empty).
	Kind Kind
	// Target must satisfy LabTarget.
	Target netip.AddrPort
	// Sources is where the spoofed source addresses are drawn from,
	// uniformly. It must lie within lab.SpoofPrefix4 or lab.SpoofPrefix6,
	// in the target's family.
	Sources netip.Prefix
	// Rate is in packets per second; 0 sends as fast as possible.
	Rate int
	// Count is how many packets to send, at most MaxFloodCount. Required.
	Count int
	// Duration is how long the flood may last, at most MaxFloodDuration.
	// Required.
	Duration time.Duration
	// Batch is the number of packets per sendmmsg call (DefaultBatch when
	// 0). At a configured rate it shrinks to about a millisecond's worth.
	Batch int
}

// Validate checks the bounds and the source range.
func (c *FloodConfig) Validate() error {
	dst := c.Target.Addr()
	if _, err := ParseKind(string(c.Kind)); err != nil {
		return fmt.Errorf("flood: %w", err)
	}
	switch {
	case !dst.IsValid() || dst.IsUnspecified() || dst.Is4In6():
		return fmt.Errorf("flood: invalid target address %v", dst)
	case c.Target.Port() == 0:
		return errors.New("flood: target port 0")
	case !c.Sources.IsValid():
		return errors.New("flood: no source prefix")
	case c.Sources.Addr().Is4() != dst.Is4():
		return fmt.Errorf("flood: sources %v and target %v differ in address family", c.Sources, dst)
	case c.Count <= 0 || c.Count > MaxFloodCount:
		return fmt.Errorf("flood: count %d outside 1..%d", c.Count, MaxFloodCount)
	case c.Duration <= 0 || c.Duration > MaxFloodDuration:
		return fmt.Errorf("flood: duration %v outside (0, %v]", c.Duration, MaxFloodDuration)
	case c.Rate < 0 || c.Rate > MaxFloodRate:
		return fmt.Errorf("flood: rate %d outside 0..%d", c.Rate, MaxFloodRate)
	case c.Batch < 0 || c.Batch > MaxBatch:
		return fmt.Errorf("flood: batch %d outside 0..%d", c.Batch, MaxBatch)
	}
	if !LabTarget(dst) {
		return fmt.Errorf("flood: target %v is not a loopback, private, documentation or benchmarking address", dst)
	}
	allowed := lab.SpoofPrefix4
	if !dst.Is4() {
		allowed = lab.SpoofPrefix6
	}
	if c.Sources.Bits() < allowed.Bits() || !allowed.Contains(c.Sources.Addr()) {
		return fmt.Errorf("flood: sources %v outside the spoofing range %v", c.Sources, allowed)
	}
	return nil
}

// labRanges are the non-private ranges a flood may still target: the
// documentation and benchmarking ranges the lab's namespaces use.
var labRanges = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// LabTarget reports whether a flood may target a: a loopback, private
// (RFC 1918, ULA), documentation or benchmarking address, never one that
// could belong to someone on the Internet.
func LabTarget(a netip.Addr) bool {
	if a.IsLoopback() || a.IsPrivate() {
		return true
	}
	for _, p := range labRanges {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// batchSize is the number of packets per sendmmsg for this config.
func (c *FloodConfig) batchSize() int {
	b := c.Batch
	if b == 0 {
		b = DefaultBatch
	}
	if c.Rate > 0 {
		perPeriod := int(int64(c.Rate) * int64(pacedBatchPeriod) / int64(time.Second))
		b = min(b, max(perPeriod, 1))
	}
	return min(b, c.Count)
}

// FloodStats reports a flood.
type FloodStats struct {
	Sent    int // packets the kernel accepted
	Errors  int // packets whose send failed (each is skipped, not retried)
	Elapsed time.Duration
}

// PPS is the achieved send rate.
func (s FloodStats) PPS() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// Flooder is a flood ready to run: a raw socket connected to the target
// and the preallocated batch it sends from.
type Flooder struct {
	cfg   FloodConfig
	fd    int
	gen   floodGen
	batch int
	slot  int // bytes between packets in buf
	buf   []byte
	iovs  []unix.Iovec
	msgs  []unix.Mmsghdr
}

// NewFlooder validates cfg and opens the raw socket in the calling thread's
// network namespace.
func NewFlooder(cfg FloodConfig) (*Flooder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Sources = cfg.Sources.Masked()
	fd, err := openRawSocket(cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("flood: %w", err)
	}
	f := &Flooder{
		cfg:   cfg,
		fd:    fd,
		gen:   newFloodGen(cfg.Kind, cfg.Target, cfg.Sources, rand.Uint64(), rand.Uint64()),
		batch: cfg.batchSize(),
		slot:  packet.MaxHandshakeLen,
	}
	f.buf = make([]byte, f.batch*f.slot)
	f.iovs = make([]unix.Iovec, f.batch)
	f.msgs = make([]unix.Mmsghdr, f.batch)
	// Every packet of a kind has the same options, hence the same length.
	n, err := f.gen.build(f.buf[:f.slot])
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("flood: %w", err)
	}
	for i := range f.msgs {
		f.iovs[i].Base = &f.buf[i*f.slot]
		f.iovs[i].SetLen(n)
		f.msgs[i].Hdr.Iov = &f.iovs[i]
		f.msgs[i].Hdr.SetIovlen(1)
	}
	return f, nil
}

func openRawSocket(target netip.AddrPort) (int, error) {
	dst := target.Addr()
	family, level, hdrincl := unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: dst.As16()}
	if dst.Is4() {
		family, level, hdrincl = unix.AF_INET, unix.IPPROTO_IP, unix.IP_HDRINCL
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	// IPPROTO_RAW implies header-included; say it anyway.
	if err := unix.SetsockoptInt(fd, level, hdrincl, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("header-included option: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sendBuffer)
	}
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("send timeout: %w", err)
	}
	// Connected, every message goes to the target without a msg_name, and
	// a target without a route fails here rather than in the loop.
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect raw socket to %v: %w", dst, err)
	}
	return fd, nil
}

// Flood opens a Flooder in the caller's namespace, runs it and closes it.
func Flood(ctx context.Context, cfg FloodConfig) (FloodStats, error) {
	f, err := NewFlooder(cfg)
	if err != nil {
		return FloodStats{}, err
	}
	defer f.Close()
	return f.Run(ctx)
}

// Close releases the socket.
func (f *Flooder) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

// Run floods until Count packets were tried, Duration passed or ctx ended,
// whichever comes first. It returns ctx's error when ctx ended it, and an
// error when sends keep failing; the stats are valid in every case. A
// Flooder runs once at a time; running it again starts a new flood with
// the same bounds.
func (f *Flooder) Run(ctx context.Context) (FloodStats, error) {
	if f.fd < 0 {
		return FloodStats{}, errors.New("flood: closed")
	}
	var (
		st        FloodStats
		tried     int // Sent + Errors
		failures  int // consecutive
		lastErr   error
		rate      = int64(f.cfg.Rate)
		count     = f.cfg.Count
		start     = time.Now()
		deadline  = start.Add(f.cfg.Duration)
		pause     = time.NewTimer(time.Hour)
		cancelled = ctx.Done()
	)
	pause.Stop()
	finish := func(err error) (FloodStats, error) {
		st.Elapsed = time.Since(start)
		return st, err
	}

	for tried < count {
		select {
		case <-cancelled:
			return finish(ctx.Err())
		default:
		}
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if rate > 0 {
			due := start.Add(time.Duration(int64(tried) * int64(time.Second) / rate))
			if !due.Before(deadline) {
				break // the rest is due after the flood ends
			}
			if wait := due.Sub(now); wait > 0 {
				pause.Reset(wait)
				select {
				case <-cancelled:
					pause.Stop()
					return finish(ctx.Err())
				case <-pause.C:
				}
			}
		}

		n := min(f.batch, count-tried)
		for i := range n {
			if _, err := f.gen.build(f.buf[i*f.slot : (i+1)*f.slot]); err != nil {
				return finish(err)
			}
		}
		for off := 0; off < n; {
			sent, err := rawsock.SendMmsg(f.fd, f.msgs[off:n])
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				// Skip the packet the kernel refused; the rest of the
				// batch is retried.
				st.Errors++
				off++
				failures++
				lastErr = err
				if failures >= maxConsecutiveErrors {
					tried += off
					return finish(fmt.Errorf("flood: %d sends in a row failed: %w", failures, lastErr))
				}
			default:
				st.Sent += sent
				off += sent
				failures = 0
			}
		}
		tried += n
	}
	return finish(nil)
}

// floodGen builds the flood's packets, SYNs or forged ACKs: random source
// address within the prefix, random source port in 1024..65535, random
// sequence number and timestamp; a SYN carries fixed Linux-like options,
// an ACK a random acknowledgement number and timestamp echo. One
// generator makes both kinds, so that they differ in the TCP header alone.
type floodGen struct {
	rng  rand.PCG
	seg  packet.Segment
	dst  netip.AddrPort
	is4  bool
	ack  bool      // forged ACKs rather than SYNs
	base [2]uint64 // the prefix, as a big-endian 128-bit number (IPv4 in the low 32 bits)
	host [2]uint64 // mask of the host bits
}

// ackWindow is the window of a Linux client's handshake ACK: its 64240
// bytes (44 × 1460) at window scale 7, rounded up as Linux does.
const ackWindow = 502

func newFloodGen(kind Kind, dst netip.AddrPort, src netip.Prefix, seed1, seed2 uint64) floodGen {
	g := floodGen{
		rng: *rand.NewPCG(seed1, seed2),
		dst: dst,
		is4: dst.Addr().Is4(),
		ack: kind == KindACK,
	}
	mss, win := uint16(1460), uint16(64240) // 44 * 1460, as Linux computes it
	if g.is4 {
		a := src.Addr().As4()
		g.base[1] = uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3])
		g.host[1] = uint64(1)<<(32-src.Bits()) - 1
	} else {
		mss, win = 1440, 64800 // IPv6's 20 extra header bytes
		a := src.Addr().As16()
		for i := range 16 {
			g.base[i/8] = g.base[i/8]<<8 | uint64(a[i])
		}
		bits := src.Bits()
		switch {
		case bits >= 64:
			g.host[1] = ^uint64(0) >> (bits - 64) // 0 for a /128
		default:
			g.host[0] = ^uint64(0) >> bits
			g.host[1] = ^uint64(0)
		}
	}
	g.seg = packet.Segment{
		Dst:    dst,
		Flags:  packet.SYN,
		Window: win,
		Options: packet.Options{
			MSS: mss, HasMSS: true,
			SACKPermitted: true,
			HasTimestamps: true,
			WindowScale:   7, HasWindowScale: true,
		},
	}
	if g.ack {
		// NOP, NOP, timestamps: what a Linux client's handshake ACK
		// carries.
		g.seg.Flags, g.seg.Window = packet.ACK, ackWindow
		g.seg.Options = packet.Options{HasTimestamps: true}
	}
	return g
}

// build writes the next packet into b.
func (g *floodGen) build(b []byte) (int, error) {
	r1, r2 := g.rng.Uint64(), g.rng.Uint64()
	var src netip.Addr
	if g.is4 {
		v := uint32(g.base[1] | r1&g.host[1])
		src = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	} else {
		hi, lo := g.base[0]|g.rng.Uint64()&g.host[0], g.base[1]|g.rng.Uint64()&g.host[1]
		var a [16]byte
		for i := range 8 {
			a[i] = byte(hi >> (56 - 8*i))
			a[8+i] = byte(lo >> (56 - 8*i))
		}
		src = netip.AddrFrom16(a)
	}
	// Ports 1024..65535 from 16 random bits by multiply-shift.
	port := 1024 + uint16((r2&0xffff)*(65536-1024)>>16)
	g.seg.Src = netip.AddrPortFrom(src, port)
	g.seg.Seq = uint32(r1 >> 32)
	g.seg.Options.TSVal = uint32(r2 >> 32)
	if g.ack {
		r3 := g.rng.Uint64()
		g.seg.Ack = uint32(r3)
		g.seg.Options.TSEcr = uint32(r3 >> 32)
	}
	return packet.Build(b, &g.seg)
}
