package capture

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Defaults and bounds of Config.
const (
	DefaultFirst    = 1000
	DefaultRate     = 10
	DefaultSnaplen  = 128
	DefaultMaxBytes = 8 << 20
	DefaultRing     = 1024

	// MinSnaplen keeps an IPv6 header and a TCP header with options.
	MinSnaplen = 100
	MaxSnaplen = 65535
	MaxRing    = 1 << 16
)

// Sizes of the pcap file format: the file header and each record's.
const (
	fileHeaderLen   = 24
	recordHeaderLen = 16
)

// Config bounds one attack's sample. The zero Config takes the defaults.
type Config struct {
	// First is how many packets are kept unconditionally at the start
	// (DefaultFirst).
	First int
	// Rate is how many packets a second are kept after the first First
	// (DefaultRate): a token bucket that holds at most one second's
	// worth, timed by the packets' timestamps. Negative keeps none.
	Rate int
	// Snaplen is the most bytes kept of each packet (DefaultSnaplen):
	// headers, not payload.
	Snaplen int
	// MaxBytes bounds the file, headers included (DefaultMaxBytes).
	MaxBytes int64
	// Ring is the number of packets that can wait for the writer
	// (DefaultRing); it takes Ring*(Snaplen+16) bytes.
	Ring int
}

func (c Config) withDefaults() (Config, error) {
	if c.First == 0 {
		c.First = DefaultFirst
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Snaplen == 0 {
		c.Snaplen = DefaultSnaplen
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.Ring == 0 {
		c.Ring = DefaultRing
	}
	switch {
	case c.First < 0:
		return c, fmt.Errorf("first %d is negative", c.First)
	case c.Snaplen < MinSnaplen || c.Snaplen > MaxSnaplen:
		return c, fmt.Errorf("snaplen %d out of range %d..%d", c.Snaplen, MinSnaplen, MaxSnaplen)
	case c.MaxBytes < fileHeaderLen+recordHeaderLen+int64(c.Snaplen):
		return c, fmt.Errorf("max bytes %d cannot hold one packet of %d bytes", c.MaxBytes, c.Snaplen)
	case c.Ring < 1 || c.Ring > MaxRing:
		return c, fmt.Errorf("ring %d out of range 1..%d", c.Ring, MaxRing)
	}
	return c, nil
}

// ErrConfig is wrapped by the errors of a bad Config.
var ErrConfig = errors.New("capture: bad config")

// Counts tell what became of the packets offered to a Sampler. Once it is
// closed, Offered = Written + Skipped + OverSize + Dropped.
type Counts struct {
	Offered  uint64 // IP packets offered
	Written  uint64 // in the file
	Skipped  uint64 // past the first First, beyond the rate
	OverSize uint64 // would have taken the file past MaxBytes
	Dropped  uint64 // the ring was full, or the file had failed
	Invalid  uint64 // not an IP packet: empty, or not version 4 or 6; not offered
}

// Result is what a closed Sampler wrote.
type Result struct {
	Path   string // the file, if the Sampler came from a Dir
	Bytes  int64  // the file's size
	Counts Counts
}

// record is the header of a packet waiting in the ring.
type record struct {
	ts      int64 // Unix nanoseconds
	caplen  uint32
	origlen uint32
}

// A Sampler writes a pcap file of one attack's packets: the first ones,
// then a trickle, each cut to a snaplen, in a file of bounded size. Offer
// copies a packet into a preallocated ring and returns at once; a
// goroutine of the Sampler's own writes the ring to the file.
type Sampler struct {
	cfg  Config
	cost int64 // nanoseconds of bucket credit a trickle packet takes
	w    io.WriteCloser
	cw   countingWriter // w, as the writer goroutine sees it
	path string

	mu      sync.Mutex
	data    []byte   // Ring slots of Snaplen bytes
	recs    []record // their headers
	head    int      // the oldest waiting slot
	waiting int      // slots queued for the writer
	credit  int64    // token bucket, in nanoseconds
	last    int64    // when credit was last added
	bytes   int64    // the file's size once every queued packet is written
	closed  bool
	failed  bool
	counts  Counts

	wake    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
	onClose func(Result)
	result  Result
	err     error
}

// NewSampler writes a pcap file header to w and returns a Sampler writing
// the packets offered after it. Close closes w.
func NewSampler(w io.WriteCloser, cfg Config) (*Sampler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	s := &Sampler{
		cfg:     cfg,
		w:       w,
		data:    make([]byte, cfg.Ring*cfg.Snaplen),
		recs:    make([]record, cfg.Ring),
		bytes:   fileHeaderLen,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if cfg.Rate > 0 {
		s.cost = int64(time.Second) / int64(cfg.Rate)
	}
	s.cw.w = w
	if err := pcapgo.NewWriter(&s.cw).WriteFileHeader(uint32(cfg.Snaplen), layers.LinkTypeRaw); err != nil {
		return nil, fmt.Errorf("capture: writing the file header: %w", err)
	}
	go s.run()
	return s, nil
}

// Offer hands the Sampler an IP packet (IPv4 or IPv6, no link-layer
// header) seen at ts, and reports whether it will be written. It never
// blocks on the file and allocates nothing: a packet it cannot keep is
// counted and forgotten. pkt is copied and may be reused at once. A zero
// ts means now.
func (s *Sampler) Offer(pkt []byte, ts time.Time) bool {
	if len(pkt) == 0 || (pkt[0]>>4 != 4 && pkt[0]>>4 != 6) {
		s.mu.Lock()
		s.counts.Invalid++
		s.mu.Unlock()
		return false
	}
	if ts.IsZero() {
		ts = time.Now()
	}
	now := ts.UnixNano()
	caplen := min(len(pkt), s.cfg.Snaplen)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.counts.Offered++
	switch {
	case s.failed:
		s.counts.Dropped++
		return false
	case s.counts.Offered > uint64(s.cfg.First) && !s.take(now):
		s.counts.Skipped++
		return false
	case s.bytes+recordHeaderLen+int64(caplen) > s.cfg.MaxBytes:
		s.counts.OverSize++
		return false
	case s.waiting == len(s.recs):
		s.counts.Dropped++
		return false
	}
	i := (s.head + s.waiting) % len(s.recs)
	copy(s.data[i*s.cfg.Snaplen:], pkt[:caplen])
	s.recs[i] = record{ts: now, caplen: uint32(caplen), origlen: uint32(len(pkt))}
	s.waiting++
	s.bytes += recordHeaderLen + int64(caplen)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// take spends one trickle packet's worth of the token bucket, if it holds
// that much, after crediting the time since the last packet. The bucket
// starts empty when the first First are done, and holds one second.
func (s *Sampler) take(now int64) bool {
	if s.cost == 0 {
		return false
	}
	if s.last == 0 {
		s.last = now
	}
	if now > s.last {
		s.credit = min(s.credit+now-s.last, int64(time.Second))
		s.last = now
	}
	if s.credit < s.cost {
		return false
	}
	s.credit -= s.cost
	return true
}

// Counts returns the counts so far.
func (s *Sampler) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// Path returns the file's path, if the Sampler came from a Dir.
func (s *Sampler) Path() string { return s.path }

// Close stops taking packets, writes those waiting, closes the file and
// returns what was written, with the first error met writing it. It may be
// called more than once and returns the same each time.
func (s *Sampler) Close() (Result, error) {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		<-s.stopped
		s.mu.Lock()
		s.result = Result{Path: s.path, Bytes: s.cw.n, Counts: s.counts}
		s.mu.Unlock()
		if s.onClose != nil {
			s.onClose(s.result)
		}
	})
	return s.result, s.err
}

// run is the writer: it waits for packets and writes the waiting ones in
// a batch, the lock held only to learn and release them.
func (s *Sampler) run() {
	defer close(s.stopped)
	bw := bufio.NewWriterSize(&s.cw, 64<<10)
	pw := pcapgo.NewWriter(bw)
	stopping := false
	for {
		if !stopping {
			select {
			case <-s.wake:
			case <-s.stop:
				stopping = true
			}
		}
		s.mu.Lock()
		head, n := s.head, s.waiting
		failed := s.failed
		s.mu.Unlock()

		var written uint64
		for j := range n {
			if failed {
				break
			}
			i := (head + j) % len(s.recs)
			r := s.recs[i]
			ci := gopacket.CaptureInfo{
				Timestamp:     time.Unix(0, r.ts),
				CaptureLength: int(r.caplen),
				Length:        int(r.origlen),
			}
			if err := pw.WritePacket(ci, s.data[i*s.cfg.Snaplen:][:r.caplen]); err != nil {
				s.fail(fmt.Errorf("capture: writing a packet: %w", err))
				failed = true
				break
			}
			written++
		}
		if n > 0 && !failed {
			if err := bw.Flush(); err != nil {
				// What the buffer held is lost with this batch.
				s.fail(fmt.Errorf("capture: writing: %w", err))
				failed = true
				written = 0
			}
		}

		s.mu.Lock()
		s.head = (head + n) % len(s.recs)
		s.waiting -= n
		s.counts.Written += written
		s.counts.Dropped += uint64(n) - written
		more := s.waiting > 0
		s.mu.Unlock()

		if stopping && !more {
			break
		}
	}
	if err := s.w.Close(); err != nil {
		s.fail(fmt.Errorf("capture: closing: %w", err))
	}
}

// fail records the first write error; from then on packets are dropped.
func (s *Sampler) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.failed {
		s.failed = true
		s.err = err
	}
}

// countingWriter counts the bytes that reached the file.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
