package nstest

import (
	"bytes"
	"os"
	"strconv"
	"testing"

	"github.com/synguard/synguard/lab/netns"
)

// TCP socket states as /proc/net/tcp shows them (include/net/tcp_states.h).
const (
	TCPSynSent  = 0x02
	TCPTimeWait = 0x06
	TCPClose    = 0x07
	TCPListen   = 0x0A
)

// TCPSocket is one socket of a namespace's /proc/net/tcp or tcp6.
type TCPSocket struct {
	LocalPort uint16
	State     uint8
}

// TCPSockets lists ns's TCP sockets, both families.
func TCPSockets(t testing.TB, ns *netns.NS) []TCPSocket {
	t.Helper()
	var out []TCPSocket
	if err := ns.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for i, line := range bytes.Split(b, []byte("\n")) {
				// sl local_address rem_address st ...: local is ADDR:PORT in hex.
				fields := bytes.Fields(line)
				if i == 0 || len(fields) < 4 {
					continue
				}
				local := fields[1]
				port, err := strconv.ParseUint(string(local[bytes.LastIndexByte(local, ':')+1:]), 16, 16)
				if err != nil {
					return err
				}
				state, err := strconv.ParseUint(string(fields[3]), 16, 8)
				if err != nil {
					return err
				}
				out = append(out, TCPSocket{LocalPort: uint16(port), State: uint8(state)})
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
