package packet

import "testing"

func BenchmarkParseSYN(b *testing.B) {
	b.ReportAllocs()
	var p Packet
	for b.Loop() {
		if err := Parse(linuxSYN, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildSYNACK(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, MaxHandshakeLen)
	seg := Segment{Src: server4, Dst: client4, Seq: 1, Ack: 2, Flags: SYN | ACK,
		Options: Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}
	for b.Loop() {
		if _, err := Build(buf, &seg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyTCPChecksum(b *testing.B) {
	b.ReportAllocs()
	var p Packet
	if err := Parse(linuxSYN, &p); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		VerifyTCPChecksum(linuxSYN, &p)
	}
}
