package packet

import (
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic, and when it
// accepts a packet the lengths it reports must lie inside the input.
func FuzzParse(f *testing.F) {
	f.Add(linuxSYN)
	for _, s := range []Segment{
		{Src: client6, Dst: server6, Flags: SYN, Options: linuxSYNOptions()},
		{Src: server4, Dst: client4, Flags: SYN | ACK, Options: Options{MSS: 1400, HasMSS: true}},
	} {
		b := make([]byte, MaxHandshakeLen)
		n, _ := Build(b, &s)
		f.Add(b[:n])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := Parse(b, &p); err != nil {
			return
		}
		if p.IPHeaderLen+p.TCPHeaderLen+p.PayloadLen > len(b) || p.TCPHeaderLen < TCPHeaderLen {
			t.Fatalf("lengths ip=%d tcp=%d payload=%d exceed input %d", p.IPHeaderLen, p.TCPHeaderLen, p.PayloadLen, len(b))
		}
		if int(p.Options.NumSACKBlocks) > MaxSACKBlocks {
			t.Fatalf("%d SACK blocks", p.Options.NumSACKBlocks)
		}
		VerifyTCPChecksum(b, &p)

		// Whatever parsed, rebuilding its handshake fields round-trips.
		s := Segment{Src: p.Source(), Dst: p.Destination(), Seq: p.Seq, Ack: p.Ack, Flags: p.Flags, Window: p.Window, Options: p.Options, HopLimit: p.HopLimit}
		s.Options.NumSACKBlocks = 0
		s.Options.SACKBlocks = [MaxSACKBlocks]SACKBlock{}
		out := make([]byte, MaxHandshakeLen)
		n, err := Build(out, &s)
		if err != nil {
			t.Fatalf("Build of parsed packet: %v", err)
		}
		var q Packet
		if err := Parse(out[:n], &q); err != nil {
			t.Fatalf("Parse of rebuilt packet: %v", err)
		}
		if q.Seq != p.Seq || q.Ack != p.Ack || q.Flags != p.Flags || q.Options.MSS != p.Options.MSS || q.Source() != p.Source() {
			t.Fatalf("rebuilt packet differs: %+v vs %+v", q, p)
		}
		if !VerifyTCPChecksum(out[:n], &q) {
			t.Fatal("rebuilt packet checksum")
		}
	})
}
