package lab

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"github.com/synguard/synguard/lab/netns"
)

// TCPExt reads the TcpExt counters of ns (nil: the caller's namespace):
// the kernel's TCP MIB beyond RFC 1213, /proc/net/netstat, both address
// families; by name without the "TcpExt:" prefix, e.g. "TSEcrRejected".
func TCPExt(ns *netns.NS) (map[string]uint64, error) {
	var b []byte
	if err := do(ns, func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/netstat")
		return err
	}); err != nil {
		return nil, err
	}
	return parseTCPExt(b)
}

// parseTCPExt reads the TcpExt pair of lines of /proc/net/netstat: one
// of names, then one of values, each behind "TcpExt:".
func parseTCPExt(b []byte) (map[string]uint64, error) {
	var names [][]byte
	for line := range bytes.Lines(b) {
		fields := bytes.Fields(line)
		if len(fields) == 0 || string(fields[0]) != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fields[1:]
			continue
		}
		if len(fields)-1 != len(names) {
			return nil, fmt.Errorf("netstat: %d TcpExt names, %d values", len(names), len(fields)-1)
		}
		out := make(map[string]uint64, len(names))
		for i, v := range fields[1:] {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat: TcpExt %s: %w", names[i], err)
			}
			out[string(names[i])] = n
		}
		return out, nil
	}
	return nil, fmt.Errorf("netstat: no TcpExt values")
}
