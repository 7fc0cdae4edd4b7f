package conntrack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	ctnl "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
)

// timoMarshal is ti-mo/conntrack's own encoding of a flow's attributes, the
// one its Create and Delete send. It is unexported, and the hand-written
// requests must match it.
//
//go:linkname timoMarshal github.com/ti-mo/conntrack.Flow.marshal
func timoMarshal(ctnl.Flow) ([]netfilter.Attribute, error)

// randomFlow returns a valid hand-off of the given family, with or without
// window scaling and with a zero or non-zero sequence delta.
func randomFlow(r *rand.Rand, v6, scaled, zeroDelta bool) handoff.Flow {
	addr := func(prefix string) netip.Addr {
		p := netip.MustParsePrefix(prefix)
		b := p.Addr().AsSlice()
		for i := p.Bits() / 8; i < len(b); i++ {
			b[i] = byte(r.Uint32())
		}
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	cp, sp := "198.18.0.0/16", "203.0.113.0/24"
	if v6 {
		cp, sp = "2001:db8::/48", "2001:db8:1::/48"
	}
	h := handoff.Flow{
		Client:            netip.AddrPortFrom(addr(cp), uint16(1+r.IntN(65535))),
		Server:            netip.AddrPortFrom(addr(sp), uint16(1+r.IntN(65535))),
		CookieISN:         r.Uint32(),
		ServerISN:         r.Uint32(),
		ClientWindowScale: cookies.WindowScale(r.IntN(15)),
		ServerWindowScale: cookies.WindowScale(r.IntN(15)),
		Mark:              1 + r.Uint32N(1<<31),
		Timeout:           time.Duration(r.Int64N(int64(10 * 24 * time.Hour))),
	}
	if !scaled {
		if r.IntN(2) == 0 {
			h.ClientWindowScale = cookies.NoWindowScale
		} else {
			h.ServerWindowScale = cookies.NoWindowScale
		}
	}
	if zeroDelta {
		h.CookieISN = h.ServerISN
	}
	return h
}

// flowCases are the combinations every encoding and round-trip test covers.
var flowCases = []struct {
	name                  string
	v6, scaled, zeroDelta bool
}{
	{"ipv4 scaled", false, true, false},
	{"ipv4 unscaled", false, false, false},
	{"ipv4 scaled zero delta", false, true, true},
	{"ipv4 unscaled zero delta", false, false, true},
	{"ipv6 scaled", true, true, false},
	{"ipv6 unscaled", true, false, false},
	{"ipv6 scaled zero delta", true, true, true},
	{"ipv6 unscaled zero delta", true, false, true},
}

// decodeRequest parses one request as the kernel would: one netlink
// message filling b, its netfilter header and attribute tree.
func decodeRequest(t *testing.T, b []byte) (netlink.Header, netfilter.Header, []netfilter.Attribute) {
	t.Helper()
	var m netlink.Message
	if err := m.UnmarshalBinary(b); err != nil {
		t.Fatalf("request does not parse as a netlink message: %v\n%x", err, b)
	}
	if int(m.Header.Length) != len(b) {
		t.Fatalf("netlink length %d, request is %d bytes", m.Header.Length, len(b))
	}
	nfh, attrs, err := netfilter.UnmarshalNetlink(m)
	if err != nil {
		t.Fatalf("request does not parse as ctnetlink: %v\n%x", err, b)
	}
	return m.Header, nfh, attrs
}

// checkRequest compares a hand-written request with ti-mo's encoding of
// the same flow: the header, the decoded attribute trees, and the bytes.
func checkRequest(t *testing.T, got []byte, typ, flags uint16, seq uint32, f ctnl.Flow) {
	t.Helper()
	want, err := timoMarshal(f)
	if err != nil {
		t.Fatal(err)
	}
	nlh, nfh, attrs := decodeRequest(t, got)
	if nlh.Type != netlink.HeaderType(typ) || nlh.Flags != netlink.HeaderFlags(flags) || nlh.Sequence != seq || nlh.PID != 0 {
		t.Errorf("netlink header %+v, want type %#x flags %#x seq %d pid 0", nlh, typ, flags, seq)
	}
	wantFamily := netfilter.ProtoIPv4
	if f.TupleOrig.IP.IsIPv6() {
		wantFamily = netfilter.ProtoIPv6
	}
	if nfh.Family != wantFamily || nfh.Version != 0 || nfh.ResourceID != 0 {
		t.Errorf("netfilter header %v, want family %v, version 0, resource 0", nfh, wantFamily)
	}
	if diff := cmp.Diff(want, nestedWithoutData(attrs)); diff != "" {
		t.Errorf("attributes (-ti-mo +hand-written):\n%s", diff)
	}
	wantBytes, err := netfilter.MarshalAttributes(want)
	if err != nil {
		t.Fatal(err)
	}
	if gotBytes := got[nlmsgHdrLen+nfnlHdrLen:]; !bytes.Equal(gotBytes, wantBytes) {
		t.Errorf("attribute bytes differ:\nhand-written %x\nti-mo        %x", gotBytes, wantBytes)
	}
}

// nestedWithoutData clears the raw payload the decoder keeps for nested
// attributes beside their children, which an encoder's tree lacks.
func nestedWithoutData(attrs []netfilter.Attribute) []netfilter.Attribute {
	for i := range attrs {
		if attrs[i].Nested {
			attrs[i].Data = nil
			nestedWithoutData(attrs[i].Children)
		}
	}
	return attrs
}

// TestCreateRequestMatchesTiMo: for random flows of every kind, the
// hand-written create decodes to exactly the attributes ti-mo/conntrack
// marshals for newFlow's Flow, and the delete to those of its Delete.
func TestCreateRequestMatchesTiMo(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range flowCases {
		t.Run(tc.name, func(t *testing.T) {
			for range 200 {
				h := randomFlow(r, tc.v6, tc.scaled, tc.zeroDelta)
				e, err := newEntry(h, DefaultTimeout)
				if err != nil {
					t.Fatalf("%+v: %v", h, err)
				}
				f, err := newFlow(h, DefaultTimeout)
				if err != nil {
					t.Fatal(err)
				}
				if f.SeqAdjReply.Position != 0 == tc.zeroDelta {
					t.Fatalf("zero delta %v, adjustment %+v", tc.zeroDelta, f.SeqAdjReply)
				}
				seq := r.Uint32()
				req := appendCreate(make([]byte, 0, reqBufSize), seq, &e)
				if len(req) > reqBufSize {
					t.Fatalf("create of %d bytes outgrows the %d-byte buffer", len(req), reqBufSize)
				}
				checkRequest(t, req, ctMsgNew, createFlags, seq, f)

				del := ctnl.NewFlow(unix.IPPROTO_TCP, 0, e.client.Addr(), e.server.Addr(), e.client.Port(), e.server.Port(), 0, 0)
				req = appendDelete(make([]byte, 0, reqBufSize), seq+1, e.client, e.server)
				checkRequest(t, req, ctMsgDelete, deleteFlags, seq+1, del)
				if t.Failed() {
					t.Fatalf("flow %+v", h)
				}
			}
		})
	}
}

// TestRequestSize: the largest request fits the Table's buffer.
func TestRequestSize(t *testing.T) {
	h := randomFlow(rand.New(rand.NewPCG(3, 4)), true, true, false)
	e, err := newEntry(h, DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(appendCreate(nil, 1, &e)); n != 272 || n > reqBufSize {
		t.Errorf("IPv6 create with adjustment is %d bytes, want 272 (buffer %d)", n, reqBufSize)
	}
}

func TestParseAck(t *testing.T) {
	ack := func(seq uint32, errno int32, extra int) []byte {
		b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen+extra)
		binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_ERROR)
		binary.NativeEndian.PutUint32(b[8:], seq)
		binary.NativeEndian.PutUint32(b[16:], uint32(-errno))
		return b
	}
	tests := []struct {
		name    string
		b       []byte
		done    bool
		errno   unix.Errno
		wantErr error
	}{
		{"success", ack(7, 0, 0), true, 0, nil},
		{"EEXIST", ack(7, int32(unix.EEXIST), 0), true, unix.EEXIST, nil},
		{"ENOENT", ack(7, int32(unix.ENOENT), 0), true, unix.ENOENT, nil},
		{"late ack of another request, then ours", append(ack(6, 0, 3), append([]byte{0}, ack(7, int32(unix.EBUSY), 0)...)...), true, unix.EBUSY, nil},
		{"only another request's", ack(6, 0, 0), false, 0, nil},
		{"empty", nil, false, 0, nil},
		{"short header", ack(7, 0, 0)[:10], false, 0, nil},
		{"length beyond datagram", ack(7, 0, 0)[:20], false, 0, errShortAck},
		{"no errno", func() []byte {
			b := ack(7, 0, 0)[:nlmsgHdrLen]
			binary.NativeEndian.PutUint32(b, nlmsgHdrLen)
			return b
		}(), false, 0, errShortAck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errnos [1]unix.Errno
			done, err := parseAcks(tt.b, 7, 7, errnos[:])
			if done != tt.done || err != tt.wantErr {
				t.Errorf("parseAcks = %v, %v; want %v, %v", done, err, tt.done, tt.wantErr)
			}
			if errnos[0] != tt.errno {
				t.Errorf("errno %v, want %v", errnos[0], tt.errno)
			}
		})
	}
}

// FuzzParseAck: any datagram yields an answer, never a panic.
func FuzzParseAck(f *testing.F) {
	f.Add([]byte{36, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint32(7))
	f.Fuzz(func(t *testing.T, b []byte, first uint32) {
		var errnos [4]unix.Errno
		parseAcks(b, first, first+3, errnos[:])
	})
}

// TestCreateRoundTrip: for random flows of every kind, the entry the
// kernel makes from the hand-written create is the one it makes from
// ti-mo/conntrack's, side by side in two namespaces, and Delete removes it.
func TestCreateRoundTrip(t *testing.T) {
	roottest.Require(t)
	r := rand.New(rand.NewPCG(5, 6))
	nsOurs, nsTiMo := nstest.New(t, "sgt-ct"), nstest.New(t, "sgt-ct")
	ours, ref := openIn(t, nsOurs), openIn(t, nsTiMo)
	for _, tc := range flowCases {
		t.Run(tc.name, func(t *testing.T) {
			for range 5 {
				h := randomFlow(r, tc.v6, tc.scaled, tc.zeroDelta)
				h.Timeout = 0 // the namespace's, the same in both
				if err := ours.Create(h); err != nil {
					t.Fatal(err)
				}
				f, err := newFlow(h, ref.defaultTimeout)
				if err != nil {
					t.Fatal(err)
				}
				if err := ref.do(ref.requestTimeout, func(c *ctnl.Conn) error { return c.Create(f) }); err != nil {
					t.Fatal(err)
				}
				got, ok, err := ours.Lookup(h.Client, h.Server)
				if err != nil || !ok {
					t.Fatalf("hand-written create: Lookup = %v, %v", ok, err)
				}
				want, ok, err := ref.Lookup(h.Client, h.Server)
				if err != nil || !ok {
					t.Fatalf("ti-mo create: Lookup = %v, %v", ok, err)
				}
				got.ID, want.ID = 0, 0
				if d := got.Timeout - want.Timeout; d < -2*time.Second || d > 2*time.Second {
					t.Errorf("timeout %v, ti-mo's entry %v", got.Timeout, want.Timeout)
				}
				got.Timeout, want.Timeout = 0, 0
				if diff := cmp.Diff(want, got, cmpAddrPort); diff != "" {
					t.Errorf("entry of %+v (-ti-mo +hand-written):\n%s", h, diff)
				}
				if tc.zeroDelta == got.Status.Has(StatusSeqAdjust) {
					t.Errorf("zero delta %v, status %v", tc.zeroDelta, got.Status)
				}

				if err := ours.Delete(h.Client, h.Server); err != nil {
					t.Fatal(err)
				}
				if _, ok, err := ours.Lookup(h.Client, h.Server); err != nil || ok {
					t.Errorf("after Delete: Lookup = %v, %v; want gone", ok, err)
				}
			}
		})
	}
}

var cmpAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// TestErrorMapping: the kernel's EEXIST and ENOENT reach the caller as
// handoff.ErrExists and handoff.ErrNotFound, the errno still inside.
func TestErrorMapping(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	for _, h := range []handoff.Flow{testHandoff(40000), randomFlow(rand.New(rand.NewPCG(7, 8)), true, true, false)} {
		if err := tb.Create(h); err != nil {
			t.Fatal(err)
		}
		err := tb.Create(h)
		if !errors.Is(err, handoff.ErrExists) || !errors.Is(err, unix.EEXIST) {
			t.Errorf("duplicate Create: err = %v, want handoff.ErrExists and EEXIST", err)
		}
		if err := tb.Delete(h.Client, h.Server); err != nil {
			t.Fatal(err)
		}
		err = tb.Delete(h.Client, h.Server)
		if !errors.Is(err, handoff.ErrNotFound) || !errors.Is(err, unix.ENOENT) {
			t.Errorf("second Delete: err = %v, want handoff.ErrNotFound and ENOENT", err)
		}
		if want := fmt.Sprintf("delete conntrack entry %s -> %s: ", h.Client, h.Server); err == nil || err.Error()[:len(want)] != want {
			t.Errorf("error %q does not start with %q", err, want)
		}
	}
	// A request the kernel could not parse is refused before it is sent.
	if err := tb.Delete(netip.MustParseAddrPort("198.51.100.2:1"), netip.MustParseAddrPort("[2001:db8::1]:80")); err == nil || errors.Is(err, handoff.ErrNotFound) {
		t.Errorf("Delete across families: err = %v, want a plain error", err)
	}
}

// TestCreateAllocs: after the first call, Create and Delete allocate nothing.
func TestCreateAllocs(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	for _, h := range []handoff.Flow{testHandoff(40000), randomFlow(rand.New(rand.NewPCG(9, 10)), true, true, false)} {
		var err error
		allocs := testing.AllocsPerRun(100, func() {
			if err = tb.Create(h); err == nil {
				err = tb.Delete(h.Client, h.Server)
			}
			if err != nil {
				panic(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s -> %s: %v allocations per Create and Delete, want 0", h.Client, h.Server, allocs)
		}
	}
}

// TestRequestDeadline: a request the kernel does not answer (a create
// asking for no ack) returns ErrTimeout after the socket's timeout, and
// the next request reopens the socket in the Table's namespace even from
// another one.
func TestRequestDeadline(t *testing.T) {
	roottest.Require(t)
	nsA, nsB := nstest.New(t, "sgt-ct"), nstest.New(t, "sgt-ct")
	var tb *Table
	if err := nsA.Do(func() (err error) {
		tb, err = Open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	const timeout = 300 * time.Millisecond
	tb.mu.Lock()
	tb.closeSocket()
	tb.requestTimeout = timeout
	tb.mu.Unlock()

	e, err := newEntry(testHandoff(40000), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = func() error {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		seq, err := tb.prepare()
		if err != nil {
			return err
		}
		seq++
		tb.seq = seq
		tb.req = appendCreate(tb.reqBuf[:0], seq, &e)
		binary.NativeEndian.PutUint16(tb.req[6:], createFlags&^unix.NLM_F_ACK)
		return tb.roundTrip(seq, seq)
	}()
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("unanswered request: err = %v, want ErrTimeout", err)
	}
	if elapsed := time.Since(start); elapsed > timeout+time.Second {
		t.Errorf("unanswered request returned after %v, deadline %v", elapsed, timeout)
	}
	if tb.fd >= 0 {
		t.Error("socket kept after a deadline expired")
	}

	// The create without ack took effect; the next, from namespace B,
	// reports it and lands in A.
	h := testHandoff(40000)
	if err := nsB.Do(func() error { return tb.Create(h) }); !errors.Is(err, handoff.ErrExists) {
		t.Fatalf("Create after redial: err = %v, want handoff.ErrExists from namespace A", err)
	}
	h2 := testHandoff(40001)
	if err := nsB.Do(func() error { return tb.Create(h2) }); err != nil {
		t.Fatal(err)
	}
	conntrackCLI(t, nsA, h2.Client, h2.Server)
	if e, ok, err := openIn(t, nsB).Lookup(h2.Client, h2.Server); err != nil || ok {
		t.Errorf("entry leaked into namespace B: %+v, %v, %v", e, ok, err)
	}
}

// TestCreateBatch: a batch crossing MaxBatch, with an invalid flow and a
// duplicate in the middle, creates every other entry as Create would and
// reports each failure at its own index.
func TestCreateBatch(t *testing.T) {
	roottest.Require(t)
	r := rand.New(rand.NewPCG(11, 12))
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	existing := testHandoff(40000)
	if err := tb.Create(existing); err != nil {
		t.Fatal(err)
	}
	flows := make([]handoff.Flow, MaxBatch+5)
	for i := range flows {
		tc := flowCases[i%len(flowCases)]
		flows[i] = randomFlow(r, tc.v6, tc.scaled, tc.zeroDelta)
	}
	const invalid, duplicate = 3, MaxBatch - 2
	flows[invalid].Mark = 0
	flows[duplicate] = existing
	errs := make([]error, len(flows))
	tb.CreateBatch(flows, errs)

	for i, h := range flows {
		switch i {
		case invalid:
			if !errors.Is(errs[i], errNoMark) {
				t.Errorf("flow %d without mark: err = %v, want errNoMark", i, errs[i])
			}
			continue
		case duplicate:
			if !errors.Is(errs[i], handoff.ErrExists) {
				t.Errorf("flow %d, a duplicate: err = %v, want handoff.ErrExists", i, errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Errorf("flow %d: %v", i, errs[i])
			continue
		}
		e, ok, err := tb.Lookup(h.Client, h.Server)
		if err != nil || !ok {
			t.Errorf("flow %d: Lookup = %v, %v", i, ok, err)
			continue
		}
		if err := tb.Delete(h.Client, h.Server); err != nil {
			t.Fatal(err)
		}
		if err := tb.Create(h); err != nil {
			t.Fatal(err)
		}
		want, _, err := tb.Lookup(h.Client, h.Server)
		if err != nil {
			t.Fatal(err)
		}
		e.ID, want.ID, e.Timeout, want.Timeout = 0, 0, 0, 0
		if diff := cmp.Diff(want, e, cmpAddrPort); diff != "" {
			t.Errorf("flow %d, batched entry (-Create's +CreateBatch's):\n%s", i, diff)
		}
	}
}

// TestCreateBatchAllocs: a batch that succeeds allocates nothing.
func TestCreateBatchAllocs(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	flows := make([]handoff.Flow, MaxBatch)
	for i := range flows {
		flows[i] = testHandoff(40000 + uint16(i))
	}
	errs := make([]error, len(flows))
	allocs := testing.AllocsPerRun(50, func() {
		tb.CreateBatch(flows, errs)
		for i, h := range flows {
			if errs[i] != nil {
				panic(errs[i])
			}
			if err := tb.Delete(h.Client, h.Server); err != nil {
				panic(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch of %d, want 0", allocs, len(flows))
	}
}

// The engine batches creates through a Table.
var _ engine.BatchKernel = (*Table)(nil)
