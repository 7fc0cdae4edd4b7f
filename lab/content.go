package lab

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// MaxContentBytes bounds the body GET /bytes/N serves.
const MaxContentBytes int64 = 1 << 34

// contentSeed derives the content stream's key from its length, so that
// bodies of different lengths differ from the first byte.
func contentSeed(n int64) [32]byte {
	var b [8 + 24]byte
	copy(b[8:], "synguard lab content v1")
	binary.BigEndian.PutUint64(b[:8], uint64(n))
	return sha256.Sum256(b[:])
}

// NewContentReader returns the n bytes GET /bytes/n serves: a ChaCha8
// stream keyed by n, then EOF. It is fast (several GB/s) and the same on
// every machine and Go release (ChaCha8Rand is a fixed specification).
func NewContentReader(n int64) io.Reader {
	seed := contentSeed(n)
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// ContentSHA256 is the SHA-256 of the body GET /bytes/n serves.
func ContentSHA256(n int64) [32]byte {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(h, NewContentReader(n), buf); err != nil {
		panic(err) // the reader never fails
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
