package nfq

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// kernelStatsPath is the kernel's per-namespace queue table. thread-self,
// not self: /proc/self/net shows the namespace of the process's main
// thread, while a caller inside a namespace (netns.NS.Do) is on a locked
// thread that may be elsewhere.
const kernelStatsPath = "/proc/thread-self/net/netfilter/nfnetlink_queue"

// KernelQueueStats is one line of /proc/net/netfilter/nfnetlink_queue: the
// kernel's view of one bound queue.
type KernelQueueStats struct {
	Queue        uint16 // queue number
	PortID       uint32 // netlink port id of the bound socket (Queue.PortID)
	Waiting      uint32 // packets handed to userspace, awaiting a verdict
	CopyMode     uint8  // 0 none, 1 meta, 2 packet
	CopyRange    uint32 // bytes copied per packet
	QueueDropped uint64 // packets dropped because the queue was full (fail-closed)
	UserDropped  uint64 // packets dropped because the socket buffer was full (fail-closed)
	LastID       uint32 // id given to the most recent packet
}

// KernelStats reads the queue table of the calling thread's network
// namespace. It needs the nfnetlink_queue module loaded, which any bound
// queue implies.
func KernelStats() ([]KernelQueueStats, error) {
	r, err := OpenKernelStats()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Read()
}

// A KernelStatsReader reads the queue table again and again through one
// open file. A daemon that samples the table every second on an
// otherwise idle machine paid more for the cold path lookup of each open
// than for anything else it did while idle.
type KernelStatsReader struct {
	mu  sync.Mutex
	f   *os.File
	buf []byte
}

// OpenKernelStats opens the queue table of the calling thread's network
// namespace, which stays the reader's.
func OpenKernelStats() (*KernelStatsReader, error) {
	f, err := os.Open(kernelStatsPath)
	if err != nil {
		return nil, fmt.Errorf("nfq: kernel stats: %w", err)
	}
	return &KernelStatsReader{f: f, buf: make([]byte, 4096)}, nil
}

// Read reads the table as it is now: a read from offset 0 makes the
// kernel print it afresh.
func (r *KernelStatsReader) Read() ([]KernelQueueStats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		n, err := r.f.ReadAt(r.buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("nfq: kernel stats: %w", err)
		}
		if n < len(r.buf) {
			return ParseKernelStats(bytes.NewReader(r.buf[:n]))
		}
		// The table may have grown past the buffer: read it whole again.
		r.buf = make([]byte, 2*len(r.buf))
	}
}

// Close closes the file.
func (r *KernelStatsReader) Close() error { return r.f.Close() }

// ParseKernelStats parses the nfnetlink_queue proc table. The kernel
// (net/netfilter/nfnetlink_queue.c, seq_show) prints per bound queue:
//
//	queue_number peer_portid queue_total copy_mode copy_range queue_dropped queue_user_dropped id_sequence 1
//
// The constant last column is ignored; further columns a later kernel might
// append are ignored too.
func ParseKernelStats(r io.Reader) ([]KernelQueueStats, error) {
	var out []KernelQueueStats
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 8 {
			return nil, fmt.Errorf("nfq: kernel stats line %d: %d fields, want at least 8: %q", line, len(f), sc.Text())
		}
		p := fieldParser{f: f}
		s := KernelQueueStats{
			Queue:        uint16(p.uint(0, 16)),
			PortID:       uint32(p.uint(1, 32)),
			Waiting:      uint32(p.uint(2, 32)),
			CopyMode:     uint8(p.uint(3, 8)),
			CopyRange:    uint32(p.uint(4, 32)),
			QueueDropped: p.uint(5, 64),
			UserDropped:  p.uint(6, 64),
			LastID:       uint32(p.uint(7, 32)),
		}
		if p.err != nil {
			return nil, fmt.Errorf("nfq: kernel stats line %d: %w", line, p.err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("nfq: kernel stats: %w", err)
	}
	return out, nil
}

var kernelStatsColumns = [...]string{
	"queue_number", "peer_portid", "queue_total", "copy_mode",
	"copy_range", "queue_dropped", "queue_user_dropped", "id_sequence",
}

// fieldParser parses numeric columns, keeping the first error.
type fieldParser struct {
	f   []string
	err error
}

func (p *fieldParser) uint(i, bits int) uint64 {
	if p.err != nil {
		return 0
	}
	v, err := strconv.ParseUint(p.f[i], 10, bits)
	if err != nil {
		p.err = fmt.Errorf("column %d (%s): %w", i+1, kernelStatsColumns[i], err)
	}
	return v
}
