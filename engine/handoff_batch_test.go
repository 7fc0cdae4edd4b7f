package engine

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// batchKernel is a fakeHandoff that also creates in batches, failing the
// flows of chosen client ports with chosen errors.
type batchKernel struct {
	*fakeHandoff
	batches []int
	fail    map[uint16]error
}

func (k *batchKernel) CreateBatch(flows []handoff.Flow, errs []error) {
	k.batches = append(k.batches, len(flows))
	for i, f := range flows {
		k.got = append(k.got, f)
		errs[i] = k.fail[f.Client.Port()]
	}
}

// TestHandoffBatch: flows waiting together are created in one batch; each
// then finishes as alone: a window update, a replaced entry, or resets.
func TestHandoffBatch(t *testing.T) {
	h := newHarness(t, nil)
	bk := &batchKernel{fakeHandoff: h.handoff, fail: map[uint16]error{
		40001: handoff.ErrExists,             // an old entry on its ports: replaced
		40002: errors.New("netlink says no"), // reset both ends
	}}
	const n = 5
	for i := range n {
		c := netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i))
		h.handle(syn(c, server, linuxOptions()), nf.Drop)
		cookie := h.expect(1)[0].p.Seq
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
		h.expect(1) // the replayed SYN
		h.handle(packet.Segment{Src: server, Dst: c, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 1000}, nf.Drop)
		h.send.take() // the backend's ACK, or none for a reused flow
	}

	s := new(handoffScratch)
	m := 0
	for m < n {
		s.keys[m] = <-h.e.handoffs
		m++
	}
	out := h.e.newOutbox(h.e.cfg.NewBatch())
	h.e.handoffAll(out, s, m, bk)
	out.flush()

	if len(bk.batches) != 1 || bk.batches[0] != n {
		t.Fatalf("batches %v, want one of %d", bk.batches, n)
	}
	// The one that found an entry was deleted and created again alone.
	if h.handoff.deleted != 1 || len(h.handoff.got) != n+1 || h.handoff.got[n].Client.Port() != 40001 {
		t.Fatalf("deleted %d, creates %d", h.handoff.deleted, len(h.handoff.got))
	}
	updates, resets := 0, 0
	for _, p := range h.send.take() {
		switch {
		case p.p.Flags.Has(packet.RST):
			resets++
			if p.p.Source().Port() != 40002 && p.p.Destination().Port() != 40002 {
				t.Errorf("reset of the wrong flow: %+v", p.p)
			}
		case p.p.Destination().Addr() == client.Addr():
			updates++
		}
	}
	if updates != n-1 || resets != 2 {
		t.Errorf("%d window updates, %d resets; want %d and 2", updates, resets, n-1)
	}
	if h.stat(HandedOff) != n-1 || h.stat(HandoffFailed) != 1 || h.stat(EntryReplaced) != 1 {
		t.Errorf("handed off %d, failed %d, replaced %d", h.stat(HandedOff), h.stat(HandoffFailed), h.stat(EntryReplaced))
	}
	for i := range s.flows[:m] {
		if s.flows[i].held != (heldRefs{}) || s.errs[i] != nil {
			t.Fatalf("scratch keeps flow %d", i)
		}
	}
}
