package cookies

// The tables a cookie's option bits index. doc.go explains where each value
// comes from. Every table is sorted ascending: rounding down relies on it.
// Changing a value changes what existing cookies decode to, so a fleet
// sharing a key file must run the same tables.
var (
	// mssTable4 holds MSS values for IPv4 flows (MTU minus 40 bytes of headers).
	mssTable4 = [8]uint16{536, 1200, 1300, 1380, 1440, 1452, 1460, 8960}

	// mssTable6 holds MSS values for IPv6 flows (MTU minus 60 bytes of headers).
	mssTable6 = [8]uint16{1220, 1280, 1360, 1400, 1420, 1432, 1440, 8940}

	// wscaleTable holds window-scale shifts. Index 0 means "option absent",
	// which is not the same as shift 0: a SYN without the option turns
	// scaling off for both directions, shift 0 keeps it on.
	wscaleTable = [8]WindowScale{NoWindowScale, 0, 3, 6, 7, 8, 9, 12}
)

// Bit positions of the option fields in a cookie's low byte.
const (
	sackBit     = 0 // bit 0: SACK permitted
	wscaleShift = 1 // bits 3..1: window-scale table index
	mssShift    = 4 // bits 6..4: MSS table index
	parityShift = 7 // bit 7: key-epoch parity
	fieldMask   = 0x7
)

// mssTable returns the MSS table for a flow's address family.
func mssTable(ipv6 bool) *[8]uint16 {
	if ipv6 {
		return &mssTable6
	}
	return &mssTable4
}

// encodeOptions rounds opts down to the tables and packs them into the low
// seven bits of a cookie (the parity bit is left zero).
func encodeOptions(opts Options, ipv6 bool) uint32 {
	t := mssTable(ipv6)
	mi := 0 // an MSS below the smallest entry, or absent (0), takes entry 0
	for i := len(t) - 1; i > 0; i-- {
		if opts.MSS >= t[i] {
			mi = i
			break
		}
	}

	wi := 0 // absent
	if ws := opts.WindowScale; ws >= 0 {
		ws = min(ws, MaxWindowScale)
		wi = 1 // shift 0 is entry 1 and every present shift is >= 0
		for i := len(wscaleTable) - 1; i > 1; i-- {
			if ws >= wscaleTable[i] {
				wi = i
				break
			}
		}
	}

	var sack uint32
	if opts.SACKPermitted {
		sack = 1
	}
	return uint32(mi)<<mssShift | uint32(wi)<<wscaleShift | sack<<sackBit
}

// decodeOptions is the inverse of encodeOptions on the rounded values. Every
// 3-bit index names a table entry, so any low byte decodes.
func decodeOptions(low uint32, ipv6 bool) Options {
	return Options{
		MSS:           mssTable(ipv6)[low>>mssShift&fieldMask],
		WindowScale:   wscaleTable[low>>wscaleShift&fieldMask],
		SACKPermitted: low>>sackBit&1 == 1,
	}
}

// RoundOptions returns opts as a cookie carries them: MSS and window scale
// rounded down to the nearest table entry (the IPv6 MSS table if ipv6), a
// shift above 14 treated as 14, and any negative WindowScale treated as
// absent. Rounding down is always safe: the backend then assumes a smaller
// segment size and a smaller client window than the client really has. An
// absent or smaller MSS becomes the smallest entry (536 or 1220), the
// segment size every IPv4 host must accept (RFC 9293) and every IPv6 path
// carries (RFC 8200). Generate uses the IPv6 table when the client address
// is IPv6, v4-mapped included.
func RoundOptions(opts Options, ipv6 bool) Options {
	return decodeOptions(encodeOptions(opts, ipv6), ipv6)
}
