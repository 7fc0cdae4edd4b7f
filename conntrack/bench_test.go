package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/lab/netns"
)

// flush empties the namespace's conntrack table.
func flush(b *testing.B, ns *netns.NS) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ns.Run(ctx, "conntrack", "-F"); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCreate measures one entry creation against the real kernel, in a
// namespace of its own: back to back, and after the process was idle for
// 20 ms, as a lone handshake finds it. The idle case times only the Create
// calls and reports them as create-ns/op. Syscalls per create are counted
// from outside (strace -c -f with a fixed -benchtime=Nx).
func BenchmarkCreate(b *testing.B) {
	for _, bc := range []struct {
		name string
		idle time.Duration
	}{
		{"hot", 0},
		{"idle20ms", 20 * time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ns := nstest.New(b, "sgt-ctb")
			var tb *Table
			if err := ns.Do(func() (err error) {
				tb, err = Open()
				return err
			}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tb.Close() })

			h := testHandoff(1)
			client := netip.MustParseAddr("198.18.0.1")
			var spent time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				// A fresh tuple each time, and an empty table again before
				// it fills up.
				const perFlush = 50000
				if i%perFlush == 0 && i > 0 {
					b.StopTimer()
					flush(b, ns)
					b.StartTimer()
				}
				h.Client = netip.AddrPortFrom(client, uint16(1024+i%perFlush))
				if bc.idle > 0 {
					time.Sleep(bc.idle)
				}
				start := time.Now()
				if err := tb.Create(h); err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
			}
			b.ReportMetric(float64(spent.Nanoseconds())/float64(b.N), "create-ns/op")
		})
	}
}

// BenchmarkCreateBatch measures creates sent MaxBatch-or-fewer at a time,
// back to back; ns/op is per entry.
func BenchmarkCreateBatch(b *testing.B) {
	for _, n := range []int{1, 4, MaxBatch} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ns := nstest.New(b, "sgt-ctb")
			var tb *Table
			if err := ns.Do(func() (err error) {
				tb, err = Open()
				return err
			}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tb.Close() })

			flows, errs := make([]handoff.Flow, n), make([]error, n)
			client := netip.MustParseAddr("198.18.0.1")
			port := 0
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += n {
				if port+n > 50000 {
					b.StopTimer()
					flush(b, ns)
					port = 0
					b.StartTimer()
				}
				for i := range flows {
					flows[i] = testHandoff(0)
					flows[i].Client = netip.AddrPortFrom(client, uint16(1024+port))
					port++
				}
				tb.CreateBatch(flows, errs)
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
