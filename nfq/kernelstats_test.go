package nfq_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/synguard/synguard/nfq"
)

func TestParseKernelStats(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []nfq.KernelQueueStats
		ok   bool
	}{
		{name: "empty", in: "", want: nil, ok: true},
		{
			// Captured on kernel 6.18: queue 7 bound by this package,
			// three UDP packets queued and not yet given a verdict.
			name: "one queue",
			in:   "    7  23827     3 2 65531     0     0        3  1\n",
			want: []nfq.KernelQueueStats{{
				Queue: 7, PortID: 23827, Waiting: 3, CopyMode: 2, CopyRange: 65531, LastID: 3,
			}},
			ok: true,
		},
		{
			// Captured on kernel 6.18: a second socket gets a random port id.
			name: "two queues",
			in:   "65535 3339062311     0 2 65531     0     0        0  1\n    7  23827     3 2 65531     0     0        3  1\n",
			want: []nfq.KernelQueueStats{
				{Queue: 65535, PortID: 3339062311, CopyMode: 2, CopyRange: 65531},
				{Queue: 7, PortID: 23827, Waiting: 3, CopyMode: 2, CopyRange: 65531, LastID: 3},
			},
			ok: true,
		},
		{
			name: "every column distinct",
			in: "    0 2970535711     5 2 65531    12    34   123456  1\n" +
				"65535      1  4096 1     0 4294967295     7 4294967295  1\n",
			want: []nfq.KernelQueueStats{
				{Queue: 0, PortID: 2970535711, Waiting: 5, CopyMode: 2, CopyRange: 65531, QueueDropped: 12, UserDropped: 34, LastID: 123456},
				{Queue: 65535, PortID: 1, Waiting: 4096, CopyMode: 1, QueueDropped: 4294967295, UserDropped: 7, LastID: 4294967295},
			},
			ok: true,
		},
		{
			name: "blank lines and extra columns ignored",
			in:   "\n    1   42     0 2 65531     0     9        8  1 77\n\n",
			want: []nfq.KernelQueueStats{{Queue: 1, PortID: 42, CopyMode: 2, CopyRange: 65531, UserDropped: 9, LastID: 8}},
			ok:   true,
		},
		{name: "too few columns", in: "    1   42     0 2 65531     0     9\n", ok: false},
		{name: "not a number", in: "    1   42     x 2 65531     0     9        8  1\n", ok: false},
		{name: "queue number out of range", in: "65536   42     0 2 65531     0     9        8  1\n", ok: false},
		{name: "negative", in: "    1  -42     0 2 65531     0     9        8  1\n", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nfq.ParseKernelStats(strings.NewReader(tt.in))
			if tt.ok != (err == nil) {
				t.Fatalf("ParseKernelStats error = %v, want ok=%v", err, tt.ok)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("ParseKernelStats mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
