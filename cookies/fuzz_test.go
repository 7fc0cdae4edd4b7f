package cookies

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// fuzzAddr turns fuzzer bytes into an address: 4 bytes give IPv4, 16 give
// IPv6 (v4-mapped included), anything else the invalid zero Addr, which
// Validate must survive too.
func fuzzAddr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

// FuzzValidate feeds arbitrary flows and cookies to Validate, which must
// never panic and may accept only well-formed results, and checks that a
// cookie Generate makes for the same inputs always validates with the
// rounded options.
func FuzzValidate(f *testing.F) {
	f.Add([]byte{198, 51, 100, 7}, []byte{203, 0, 113, 10}, uint16(40001), uint16(443),
		uint32(0x89abcdef), uint32(0xdeadbeef), uint16(1460), int8(7), true)
	f.Add(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8:1::10").AsSlice(),
		uint16(40001), uint16(443), uint32(1), uint32(0), uint16(1440), int8(-1), false)
	f.Add(netip.MustParseAddr("::ffff:198.51.100.7").AsSlice(), []byte{}, uint16(0), uint16(0),
		uint32(0), uint32(0xffffffff), uint16(0), int8(127), true)

	var secret [KeySize]byte
	for i := range secret {
		secret[i] = byte(i * 7)
	}
	clock := newFakeClock(epochStart(testEpoch).Add(time.Second))
	j := newJar(secret, testPeriod, clock.Now)

	f.Fuzz(func(t *testing.T, caddr, saddr []byte, cport, sport uint16, isn, cookie uint32, mss uint16, ws int8, sack bool) {
		client := netip.AddrPortFrom(fuzzAddr(caddr), cport)
		server := netip.AddrPortFrom(fuzzAddr(saddr), sport)
		ipv6 := client.Addr().Is6()

		// An arbitrary cookie is almost always rejected, but if it passes,
		// what it decodes to must be something Generate could have made.
		if got, ok := j.Validate(client, server, isn, Cookie(cookie)); ok {
			if RoundOptions(got, ipv6) != got {
				t.Fatalf("accepted cookie %#08x decoded to unrounded options %+v", cookie, got)
			}
		}

		opts := Options{MSS: mss, WindowScale: WindowScale(ws), SACKPermitted: sack}
		c := j.Generate(client, server, isn, opts)
		got, ok := j.Validate(client, server, isn, c)
		if !ok {
			t.Fatalf("cookie %#08x for %v -> %v isn %d %+v did not validate", c, client, server, isn, opts)
		}
		if want := RoundOptions(opts, ipv6); got != want {
			t.Fatalf("cookie for %+v decoded %+v, want %+v", opts, got, want)
		}
	})
}

// FuzzRoundOptions checks what rounding promises for any input: the result
// is a table entry no larger than the input (or the smallest entry), no
// table entry lies between them, and rounding twice changes nothing.
func FuzzRoundOptions(f *testing.F) {
	f.Add(uint16(1460), int8(7), true, false)
	f.Add(uint16(0), int8(-1), false, true)
	f.Add(uint16(65535), int8(127), true, true)

	f.Fuzz(func(t *testing.T, mss uint16, ws int8, sack, ipv6 bool) {
		in := Options{MSS: mss, WindowScale: WindowScale(ws), SACKPermitted: sack}
		got := RoundOptions(in, ipv6)

		table := mssTable(ipv6)
		if !slices.Contains(table[:], got.MSS) {
			t.Fatalf("%+v: MSS %d not in table", in, got.MSS)
		}
		for _, v := range table {
			if v > got.MSS && v <= mss {
				t.Fatalf("%+v: MSS rounded to %d, but table entry %d fits", in, got.MSS, v)
			}
		}
		if mss >= table[0] && got.MSS > mss {
			t.Fatalf("%+v: MSS rounded up to %d", in, got.MSS)
		}

		if ws < 0 {
			if got.WindowScale != NoWindowScale {
				t.Fatalf("%+v: absent window scale became %d", in, got.WindowScale)
			}
		} else {
			limit := WindowScale(min(ws, 14))
			if got.WindowScale < 0 || got.WindowScale > limit {
				t.Fatalf("%+v: window scale rounded to %d, want 0..%d", in, got.WindowScale, limit)
			}
			for _, v := range wscaleTable[1:] {
				if v > got.WindowScale && v <= limit {
					t.Fatalf("%+v: window scale rounded to %d, but table entry %d fits", in, got.WindowScale, v)
				}
			}
		}

		if got.SACKPermitted != sack {
			t.Fatalf("%+v: SACK changed", in)
		}
		if again := RoundOptions(got, ipv6); again != got {
			t.Fatalf("%+v: rounding is not idempotent: %+v then %+v", in, got, again)
		}
	})
}
