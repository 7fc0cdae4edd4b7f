package lab

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/synguard/synguard/lab/netns"
)

// LinkCounters are an interface's packet and byte counters.
type LinkCounters struct {
	RxPackets, RxBytes, RxDropped uint64
	TxPackets, TxBytes, TxDropped uint64
}

// ReadLinkCounters reads the counters of iface in ns (`ip -s link`).
func ReadLinkCounters(ctx context.Context, ns *netns.NS, iface string) (LinkCounters, error) {
	out, err := runOutput(ctx, "ip", "-n", ns.Name, "-j", "-s", "link", "show", "dev", iface)
	if err != nil {
		return LinkCounters{}, err
	}
	type dir struct {
		Bytes, Packets, Dropped uint64
	}
	var links []struct {
		Stats64 struct {
			Rx, Tx dir
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return LinkCounters{}, fmt.Errorf("parse ip -s link output: %w", err)
	}
	if len(links) != 1 {
		return LinkCounters{}, fmt.Errorf("ip -s link show dev %s in %s: %d links", iface, ns.Name, len(links))
	}
	s := links[0].Stats64
	return LinkCounters{
		RxPackets: s.Rx.Packets, RxBytes: s.Rx.Bytes, RxDropped: s.Rx.Dropped,
		TxPackets: s.Tx.Packets, TxBytes: s.Tx.Bytes, TxDropped: s.Tx.Dropped,
	}, nil
}

// Sub returns c - old, counter by counter.
func (c LinkCounters) Sub(old LinkCounters) LinkCounters {
	return LinkCounters{
		RxPackets: c.RxPackets - old.RxPackets, RxBytes: c.RxBytes - old.RxBytes, RxDropped: c.RxDropped - old.RxDropped,
		TxPackets: c.TxPackets - old.TxPackets, TxBytes: c.TxBytes - old.TxBytes, TxDropped: c.TxDropped - old.TxDropped,
	}
}
