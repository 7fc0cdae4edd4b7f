package cookies

import (
	"fmt"
	"testing"
)

func TestRoundOptions(t *testing.T) {
	t.Parallel()
	// opt builds Options tersely; ws -1 is absent.
	opt := func(mss uint16, ws WindowScale, sack bool) Options {
		return Options{MSS: mss, WindowScale: ws, SACKPermitted: sack}
	}
	tests := []struct {
		name string
		in   Options
		ipv6 bool
		want Options
	}{
		// IPv4 MSS.
		{"v4 mss absent", opt(0, 7, true), false, opt(536, 7, true)},
		{"v4 mss 1", opt(1, 7, true), false, opt(536, 7, true)},
		{"v4 mss below min", opt(535, 7, true), false, opt(536, 7, true)},
		{"v4 mss min", opt(536, 7, true), false, opt(536, 7, true)},
		{"v4 mss just above min", opt(537, 7, true), false, opt(536, 7, true)},
		{"v4 mss 1199", opt(1199, 7, true), false, opt(536, 7, true)},
		{"v4 mss 1200", opt(1200, 7, true), false, opt(1200, 7, true)},
		{"v4 mss 1400", opt(1400, 7, true), false, opt(1380, 7, true)},
		{"v4 mss pppoe", opt(1452, 7, true), false, opt(1452, 7, true)},
		{"v4 mss 1459", opt(1459, 7, true), false, opt(1452, 7, true)},
		{"v4 mss ethernet", opt(1460, 7, true), false, opt(1460, 7, true)},
		{"v4 mss 1461", opt(1461, 7, true), false, opt(1460, 7, true)},
		{"v4 mss 8959", opt(8959, 7, true), false, opt(1460, 7, true)},
		{"v4 mss jumbo", opt(8960, 7, true), false, opt(8960, 7, true)},
		{"v4 mss max", opt(65535, 7, true), false, opt(8960, 7, true)},

		// IPv6 MSS.
		{"v6 mss absent", opt(0, 7, true), true, opt(1220, 7, true)},
		{"v6 mss v4 default", opt(536, 7, true), true, opt(1220, 7, true)},
		{"v6 mss below min", opt(1219, 7, true), true, opt(1220, 7, true)},
		{"v6 mss min", opt(1220, 7, true), true, opt(1220, 7, true)},
		{"v6 mss wireguard", opt(1360, 7, true), true, opt(1360, 7, true)},
		{"v6 mss 1439", opt(1439, 7, true), true, opt(1432, 7, true)},
		{"v6 mss ethernet", opt(1440, 7, true), true, opt(1440, 7, true)},
		{"v6 mss v4 ethernet", opt(1460, 7, true), true, opt(1440, 7, true)},
		{"v6 mss 8939", opt(8939, 7, true), true, opt(1440, 7, true)},
		{"v6 mss jumbo", opt(8940, 7, true), true, opt(8940, 7, true)},
		{"v6 mss max", opt(65535, 7, true), true, opt(8940, 7, true)},

		// Window scale.
		{"ws absent", opt(1460, NoWindowScale, false), false, opt(1460, NoWindowScale, false)},
		{"ws 0 is not absent", opt(1460, 0, false), false, opt(1460, 0, false)},
		{"ws 1", opt(1460, 1, false), false, opt(1460, 0, false)},
		{"ws 2", opt(1460, 2, false), false, opt(1460, 0, false)},
		{"ws 3", opt(1460, 3, false), false, opt(1460, 3, false)},
		{"ws 5", opt(1460, 5, false), false, opt(1460, 3, false)},
		{"ws 6 macOS", opt(1460, 6, false), false, opt(1460, 6, false)},
		{"ws 7 linux", opt(1460, 7, false), false, opt(1460, 7, false)},
		{"ws 8 windows", opt(1460, 8, false), false, opt(1460, 8, false)},
		{"ws 9", opt(1460, 9, false), false, opt(1460, 9, false)},
		{"ws 10", opt(1460, 10, false), false, opt(1460, 9, false)},
		{"ws 12", opt(1460, 12, false), false, opt(1460, 12, false)},
		{"ws 14", opt(1460, 14, false), false, opt(1460, 12, false)},
		{"ws 15 is 14", opt(1460, 15, false), false, opt(1460, 12, false)},
		{"ws 127 is 14", opt(1460, 127, false), false, opt(1460, 12, false)},
		{"ws -2 is absent", opt(1460, -2, false), false, opt(1460, NoWindowScale, false)},
		{"ws -128 is absent", opt(1460, -128, false), false, opt(1460, NoWindowScale, false)},
		{"v6 ws 0", opt(1440, 0, false), true, opt(1440, 0, false)},

		// SACK is carried as is.
		{"sack on", opt(1460, 7, true), false, opt(1460, 7, true)},
		{"sack off", opt(1460, 7, false), false, opt(1460, 7, false)},
		{"all absent v4", opt(0, NoWindowScale, false), false, opt(536, NoWindowScale, false)},
		{"all absent v6", opt(0, NoWindowScale, false), true, opt(1220, NoWindowScale, false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RoundOptions(tt.in, tt.ipv6); got != tt.want {
				t.Errorf("RoundOptions(%+v, ipv6=%v) = %+v, want %+v", tt.in, tt.ipv6, got, tt.want)
			}
		})
	}
}

// TestRoundOptionsExhaustive checks every MSS and every shift against a
// plain reading of the rule, "the largest entry not above the value, else
// the smallest entry", written independently of encodeOptions.
func TestRoundOptionsExhaustive(t *testing.T) {
	t.Parallel()
	for _, ipv6 := range []bool{false, true} {
		table := mssTable4[:]
		if ipv6 {
			table = mssTable6[:]
		}
		for mss := 0; mss <= 0xffff; mss++ {
			want := table[0]
			for _, v := range table {
				if v <= uint16(mss) {
					want = v
				}
			}
			got := RoundOptions(Options{MSS: uint16(mss), WindowScale: NoWindowScale}, ipv6)
			if got.MSS != want {
				t.Fatalf("ipv6=%v: MSS %d rounds to %d, want %d", ipv6, mss, got.MSS, want)
			}
		}
	}
	for ws := -128; ws <= 127; ws++ {
		want := NoWindowScale
		if ws >= 0 {
			capped := WindowScale(min(ws, 14))
			for _, v := range wscaleTable[1:] {
				if v <= capped {
					want = v
				}
			}
		}
		got := RoundOptions(Options{MSS: 1460, WindowScale: WindowScale(ws)}, false)
		if got.WindowScale != want {
			t.Fatalf("window scale %d rounds to %d, want %d", ws, got.WindowScale, want)
		}
	}
}

// TestTables pins the properties the encoding relies on, so an edit to a
// table that breaks them fails here rather than in the field.
func TestTables(t *testing.T) {
	t.Parallel()
	for name, table := range map[string][]uint16{"v4": mssTable4[:], "v6": mssTable6[:]} {
		for i := 1; i < len(table); i++ {
			if table[i] <= table[i-1] {
				t.Errorf("%s MSS table not strictly ascending at %d: %v", name, i, table)
			}
		}
	}
	// An absent MSS option means 536 for IPv4 and 1220 for IPv6 (RFC 9293
	// §3.7.1, RFC 8200 §8.3), so those must be the smallest entries.
	if mssTable4[0] != 536 || mssTable6[0] != 1220 {
		t.Errorf("smallest MSS entries = %d, %d; want 536, 1220", mssTable4[0], mssTable6[0])
	}
	if wscaleTable[0] != NoWindowScale || wscaleTable[1] != 0 {
		t.Errorf("window-scale table must start absent, 0: %v", wscaleTable)
	}
	for i := 2; i < len(wscaleTable); i++ {
		if wscaleTable[i] <= wscaleTable[i-1] || wscaleTable[i] > MaxWindowScale {
			t.Errorf("window-scale table not ascending within 0..14 at %d: %v", i, wscaleTable)
		}
	}
	for _, common := range []WindowScale{6, 7, 8, 9} {
		if got := RoundOptions(Options{WindowScale: common}, false).WindowScale; got != common {
			t.Errorf("common window scale %d is not exact (rounds to %d)", common, got)
		}
	}
}

func ExampleRoundOptions() {
	// A Linux client on PPPoE: MSS 1452, window scale 7, SACK.
	fmt.Println(RoundOptions(Options{MSS: 1452, WindowScale: 7, SACKPermitted: true}, false))
	// A client behind a tunnel with a non-table MSS and a large shift.
	fmt.Println(RoundOptions(Options{MSS: 1436, WindowScale: 11}, false))
	// Output:
	// {1452 7 true}
	// {1380 9 false}
}
