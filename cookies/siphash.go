package cookies

import (
	"encoding/binary"
	"math/bits"
)

// sipKey is a 128-bit SipHash key as two little-endian words, the form the
// algorithm consumes; keeping it split avoids re-decoding bytes on every call.
type sipKey struct {
	k0, k1 uint64
}

// sipKeyFromBytes reads a key the way the SipHash specification does: the
// first eight bytes little-endian are k0, the next eight k1.
func sipKeyFromBytes(b []byte) sipKey {
	return sipKey{
		k0: binary.LittleEndian.Uint64(b[0:8]),
		k1: binary.LittleEndian.Uint64(b[8:16]),
	}
}

// sipHash24 is SipHash-2-4 (Aumasson and Bernstein, 2012): two compression
// rounds per 8-byte word, four finalization rounds, 64-bit output. It is
// written out here rather than imported so the package depends on the
// standard library only; siphash_test.go holds it to the published vectors.
// It takes a slice but never retains it, so a caller's stack array stays on
// the stack.
func sipHash24(k sipKey, msg []byte) uint64 {
	// The initial state is the key XORed with the ASCII of
	// "somepseudorandomlygeneratedbytes", as the specification fixes it.
	v0 := k.k0 ^ 0x736f6d6570736575
	v1 := k.k1 ^ 0x646f72616e646f6d
	v2 := k.k0 ^ 0x6c7967656e657261
	v3 := k.k1 ^ 0x7465646279746573

	n := len(msg)
	for len(msg) >= 8 {
		m := binary.LittleEndian.Uint64(msg)
		v3 ^= m
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= m
		msg = msg[8:]
	}

	// The last word carries the 0..7 leftover bytes in its low end and the
	// message length mod 256 in its top byte, so messages that differ only
	// by trailing zero bytes still hash differently.
	last := uint64(n) << 56
	for i, b := range msg {
		last |= uint64(b) << (8 * i)
	}
	v3 ^= last
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= last

	v2 ^= 0xff
	for range 4 {
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	}
	return v0 ^ v1 ^ v2 ^ v3
}

// sipRound is one SipRound: the add-rotate-xor network on the four state
// words. Passing the state by value lets the compiler keep it in registers.
func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}
