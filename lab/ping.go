package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/synguard/synguard/lab/netns"
)

// MaxPings bounds a Ping.
const MaxPings = 1000

// Ping sends count ICMP echo requests to dst from inside ns (nil: the
// caller's namespace), one every interval, each waiting up to a second
// for its reply, and returns the round-trip times of those answered, in
// order. It is an error when none was.
func Ping(ctx context.Context, ns *netns.NS, dst netip.Addr, count int, interval time.Duration) ([]time.Duration, error) {
	if count < 1 || count > MaxPings {
		return nil, fmt.Errorf("ping: count %d outside 1..%d", count, MaxPings)
	}
	network, proto, req, reply := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply)
	if dst.Is6() && !dst.Is4In6() {
		network, proto, req, reply = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var c *icmp.PacketConn
	if err := do(ns, func() (err error) {
		c, err = icmp.ListenPacket(network, "")
		return err
	}); err != nil {
		return nil, fmt.Errorf("ping %s: %w", dst, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	// A raw ICMP socket sees every echo reply in the namespace: the
	// identifier tells this Ping's apart.
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	to := &net.IPAddr{IP: dst.AsSlice()}
	buf := make([]byte, 1500)
	var rtts []time.Duration
	for seq := range count {
		if seq > 0 {
			select {
			case <-ctx.Done():
				return rtts, ctx.Err()
			case <-time.After(interval):
			}
		}
		msg := icmp.Message{Type: req, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("synguard lab ping")}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return rtts, err
		}
		sent := time.Now()
		if _, err := c.WriteTo(b, to); err != nil {
			return rtts, fmt.Errorf("ping %s: %w", dst, err)
		}
		if err := c.SetReadDeadline(sent.Add(time.Second)); err != nil {
			return rtts, err
		}
		for {
			n, _, err := c.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // lost, or ctx is done
			}
			if err != nil {
				return rtts, fmt.Errorf("ping %s: %w", dst, err)
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != reply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
				rtts = append(rtts, time.Since(sent))
				break
			}
		}
		if ctx.Err() != nil {
			return rtts, ctx.Err()
		}
	}
	if len(rtts) == 0 {
		return nil, fmt.Errorf("ping %s: no reply to %d echo requests", dst, count)
	}
	return rtts, nil
}
