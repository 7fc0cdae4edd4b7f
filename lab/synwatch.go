package lab

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

// SYNWatch counts the SYNs an interface receives, telling spoofed sources
// (SpoofPrefix4, SpoofPrefix6) apart: the proof that a flood did or did not
// reach a backend.
type SYNWatch struct {
	capture *Capture
	total   atomic.Int64
	spoofed atomic.Int64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	mu   sync.Mutex
	from map[netip.Addr]int64
}

// WatchSYNs starts counting SYNs arriving on iface in ns.
func WatchSYNs(ns *netns.NS, iface string) (*SYNWatch, error) {
	c, err := OpenCapture(ns, iface)
	if err != nil {
		return nil, err
	}
	w := &SYNWatch{capture: c, stop: make(chan struct{}), done: make(chan struct{}), from: make(map[netip.Addr]int64)}
	go w.run()
	return w, nil
}

func (w *SYNWatch) run() {
	defer close(w.done)
	buf := make([]byte, 2048)
	var p packet.Packet
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, outgoing, err := w.capture.Read(buf, 100*time.Millisecond)
		if errors.Is(err, ErrCaptureTimeout) || outgoing {
			continue
		}
		if err != nil {
			return
		}
		if packet.Parse(buf[:n], &p) != nil || p.Flags&(packet.SYN|packet.ACK) != packet.SYN {
			continue
		}
		w.total.Add(1)
		if SpoofPrefix4.Contains(p.Src) || SpoofPrefix6.Contains(p.Src) {
			w.spoofed.Add(1)
			continue
		}
		w.mu.Lock()
		w.from[p.Src]++
		w.mu.Unlock()
	}
}

// Close stops counting; the counts stay readable.
func (w *SYNWatch) Close() error {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		w.capture.Close()
	})
	return nil
}

// Total is every SYN seen.
func (w *SYNWatch) Total() int64 { return w.total.Load() }

// Spoofed is the SYNs from the flood source ranges.
func (w *SYNWatch) Spoofed() int64 { return w.spoofed.Load() }

// From is the SYNs from one address.
func (w *SYNWatch) From(a netip.Addr) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.from[a]
}
