package packet

import "strings"

// Flags are the TCP header flags.
type Flags uint8

// TCP flags, in header bit order.
const (
	FIN Flags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

// Has reports whether all of want are set.
func (f Flags) Has(want Flags) bool { return f&want == want }

// String lists the set flags, e.g. "SYN|ACK".
func (f Flags) String() string {
	names := [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var parts []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// TCP option kinds this package understands.
const (
	optEOL           = 0
	optNOP           = 1
	optMSS           = 2
	optWindowScale   = 3
	optSACKPermitted = 4
	optSACK          = 5
	optTimestamps    = 8
)

// MaxWindowScale is the largest shift RFC 7323 allows; larger values are
// treated as this.
const MaxWindowScale = 14

// MaxSACKBlocks is the most SACK blocks a TCP header can hold.
const MaxSACKBlocks = 4

// SACKBlock is one selective acknowledgement range [Left, Right).
type SACKBlock struct {
	Left, Right uint32
}

// Options are the TCP options synguard reads or writes. The Has fields tell
// "absent" apart from a zero value.
type Options struct {
	MSS            uint16
	HasMSS         bool
	WindowScale    uint8 // as sent; may exceed MaxWindowScale
	HasWindowScale bool
	SACKPermitted  bool
	HasTimestamps  bool
	TSVal, TSEcr   uint32
	SACKBlocks     [MaxSACKBlocks]SACKBlock
	NumSACKBlocks  uint8
}

// optionsLen is how many option bytes Build emits for o, padded to 4.
func (o *Options) optionsLen() int {
	n := 0
	if o.HasMSS {
		n += 4
	}
	switch {
	case o.HasTimestamps:
		n += 12 // SACK-permitted (or NOP NOP) + timestamps
	case o.SACKPermitted:
		n += 4 // NOP NOP SACK-permitted
	}
	if o.HasWindowScale {
		n += 4 // NOP window scale
	}
	return n
}
