package cookies

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// KeySize is the size in bytes of the master secret and of a key file.
const KeySize = 32

// keyLabel separates this use of the master secret from any other the
// project might make of the same file later, and versions the derivation.
const keyLabel = "synguard syn-cookie epoch key v1"

// LoadKeyFile reads a master secret from path. The file must be a regular
// file of exactly KeySize raw bytes that neither group nor others can
// access: the secret is all that stands between an attacker and forged
// cookies, so a readable file is refused rather than merely warned about.
func LoadKeyFile(path string) ([KeySize]byte, error) {
	var key [KeySize]byte

	f, err := os.Open(path)
	if err != nil {
		return key, fmt.Errorf("read key file %s: %w", path, err)
	}
	defer f.Close()

	st, err := f.Stat()
	if err != nil {
		return key, fmt.Errorf("read key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return key, fmt.Errorf("key file %s is not a regular file (mode %v)", path, st.Mode())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return key, fmt.Errorf("key file %s has mode %#o and is accessible by group or others; restrict it with: chmod 600 %s",
			path, perm, path)
	}
	if st.Size() != KeySize {
		return key, fmt.Errorf("key file %s is %d bytes, want exactly %d raw random bytes (create one with: synguard keygen PATH)",
			path, st.Size(), KeySize)
	}
	if _, err := io.ReadFull(f, key[:]); err != nil {
		return key, fmt.Errorf("read key file %s: %w", path, err)
	}
	// An all-zero file is what truncate or a failed copy leaves behind, not
	// a secret; refusing it catches that mistake before it ships a fleet.
	if key == [KeySize]byte{} {
		return key, fmt.Errorf("key file %s is all zero bytes, not a random secret (create one with: synguard keygen PATH)", path)
	}
	return key, nil
}

// WriteKeyFile creates path with mode 0600 holding KeySize fresh random
// bytes, for operators to copy to every gateway that must accept the same
// cookies. It refuses to overwrite an existing file: replacing a fleet's
// shared key by accident would silently break cookie validation between
// gateways.
func WriteKeyFile(path string) error {
	var key [KeySize]byte
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("generate key for %s: %w", path, err)
	}

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create key file %s: %w", path, err)
	}
	_, werr := f.Write(key[:])
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		// Leave no half-written key behind for a later LoadKeyFile to trip on.
		os.Remove(path)
		return fmt.Errorf("write key file %s: %w", path, err)
	}
	return nil
}

// randomSecret returns a master secret for a gateway that shares its
// cookies with nobody.
func randomSecret() ([KeySize]byte, error) {
	var key [KeySize]byte
	if _, err := rand.Read(key[:]); err != nil {
		return key, fmt.Errorf("generate random cookie secret: %w", err)
	}
	return key, nil
}

// deriveKey returns the SipHash key of one epoch: the first 16 bytes of
// HMAC-SHA256(master, label || period || epoch). The period is bound too so
// that gateways configured with different periods, whose epoch numbers
// mean different times, never agree by accident. This runs once per
// rotation, so its cost and allocations stay off the per-packet path.
func deriveKey(master *[KeySize]byte, period time.Duration, epoch int64) sipKey {
	var msg [len(keyLabel) + 16]byte
	copy(msg[:], keyLabel)
	binary.BigEndian.PutUint64(msg[len(keyLabel):], uint64(period))
	binary.BigEndian.PutUint64(msg[len(keyLabel)+8:], uint64(epoch))

	mac := hmac.New(sha256.New, master[:])
	mac.Write(msg[:])
	return sipKeyFromBytes(mac.Sum(nil)[:16])
}
