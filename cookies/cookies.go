package cookies

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// Cookie is the 32-bit ISN a gateway puts in its SYN-ACK.
type Cookie uint32

// WindowScale is a TCP window-scale shift; NoWindowScale means the option
// was absent. Any other negative value is treated as absent too.
type WindowScale int8

const (
	// NoWindowScale marks a SYN without the window-scale option.
	NoWindowScale WindowScale = -1
	// MaxWindowScale is the largest shift RFC 7323 §2.3 allows; a larger
	// one is to be treated as 14.
	MaxWindowScale WindowScale = 14
)

// Valid reports whether s is NoWindowScale or a shift RFC 7323 allows.
func (s WindowScale) Valid() bool { return s >= NoWindowScale && s <= MaxWindowScale }

func (s WindowScale) String() string {
	if s == NoWindowScale {
		return "none"
	}
	return strconv.Itoa(int(s))
}

// Options are the client SYN options a cookie carries.
type Options struct {
	MSS           uint16      // client's MSS; 0 means the option was absent (encoded as the smallest table entry)
	WindowScale   WindowScale // NoWindowScale if absent
	SACKPermitted bool
}

// DefaultPeriod is the key rotation period when Config.Period is zero.
const DefaultPeriod = 60 * time.Second

// MinPeriod is the shortest rotation period New accepts. A cookie is
// guaranteed to live one period at least, and it has to outlive the client's
// round trip plus its retransmissions of the handshake ACK.
const MinPeriod = time.Second

// Config configures a Jar.
type Config struct {
	Period  time.Duration    // key rotation period; 0 means DefaultPeriod
	KeyFile string           // optional path of a shared secret file (KeySize raw bytes); "" means a random secret
	Now     func() time.Time // optional clock for tests; nil means time.Now
}

// macBits is the width of the MAC in a cookie. It is a constant so the
// forgery test can be pointed at a narrower MAC to show it would notice.
const macBits = 24

const (
	macShift = 8                  // the MAC sits above the low byte
	macMask  = 1<<macBits - 1     // the MAC bits, before shifting
	_        = uint(24 - macBits) // compile-time check: the MAC must fit above the low byte
)

// Length and offsets of the message the MAC covers; see doc.go.
const (
	msgClientFamily = 0
	msgServerFamily = 1
	msgClientAddr   = 2
	msgServerAddr   = 18
	msgClientPort   = 34
	msgServerPort   = 36
	msgClientISN    = 38
	msgLowByte      = 42
	msgLen          = 43
)

// Jar makes and checks SYN cookies. It is safe for concurrent use by many
// goroutines, and Generate and Validate do not allocate except when they are
// the first call of a new epoch.
type Jar struct {
	secret [KeySize]byte
	period time.Duration
	now    func() time.Time

	// keys holds the derived keys of the current and previous epoch. It is
	// replaced, never modified, so readers need no lock.
	keys atomic.Pointer[keySet]
}

// keySet is an immutable snapshot of the keys valid during one epoch.
type keySet struct {
	epoch int64
	// byParity[p] is the key of whichever of epoch and epoch-1 has parity p,
	// so the parity bit of a cookie indexes its key directly.
	byParity [2]sipKey
}

// New returns a Jar configured by cfg.
func New(cfg Config) (*Jar, error) {
	period := cfg.Period
	if period == 0 {
		period = DefaultPeriod
	}
	if period < MinPeriod {
		return nil, fmt.Errorf("cookie key period %v is shorter than the minimum %v", period, MinPeriod)
	}

	var secret [KeySize]byte
	var err error
	if cfg.KeyFile != "" {
		secret, err = LoadKeyFile(cfg.KeyFile)
	} else {
		secret, err = randomSecret()
	}
	if err != nil {
		return nil, err
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return newJar(secret, period, now), nil
}

// newJar builds a Jar from an already validated configuration; tests use it
// to get a jar with a known secret.
func newJar(secret [KeySize]byte, period time.Duration, now func() time.Time) *Jar {
	j := &Jar{secret: secret, period: period, now: now}
	j.keysAt(now())
	return j
}

// Generate returns the cookie for a SYN from client to server carrying
// clientISN and opts. The options are rounded down to the tables first
// (see RoundOptions); the MSS table follows the client address family.
func (j *Jar) Generate(client, server netip.AddrPort, clientISN uint32, opts Options) Cookie {
	ks := j.keysAt(j.now())
	parity := uint32(ks.epoch & 1)
	low := parity<<parityShift | encodeOptions(opts, client.Addr().Is6())
	mac := computeMAC(&ks.byParity[parity], client, server, clientISN, low)
	return Cookie(mac<<macShift | low)
}

// Validate checks cookie c (the ACK's ack-1) against the flow and the
// client's ISN (the ACK's seq-1). On success it returns the options the
// cookie carries, as rounded by Generate. A cookie validates during the
// epoch it was made in and the next one.
func (j *Jar) Validate(client, server netip.AddrPort, clientISN uint32, c Cookie) (Options, bool) {
	ks := j.keysAt(j.now())
	low := uint32(c) & 0xff
	mac := computeMAC(&ks.byParity[low>>parityShift&1], client, server, clientISN, low)
	// Constant time costs nothing here and keeps timing from hinting at how
	// many MAC bits a guess got right.
	if subtle.ConstantTimeEq(int32(mac), int32(uint32(c)>>macShift&macMask)) != 1 {
		return Options{}, false
	}
	return decodeOptions(low, client.Addr().Is6()), true
}

// keysAt returns the key set for the epoch containing t, deriving a new one
// when the epoch has moved on. Concurrent callers at a rotation may each
// derive the same set; the duplicates are identical, so whichever store wins
// is right, and the extra work happens once per period.
func (j *Jar) keysAt(t time.Time) *keySet {
	e := epochAt(t, j.period)
	old := j.keys.Load()
	if old != nil && old.epoch == e {
		return old
	}

	ks := &keySet{epoch: e}
	ks.byParity[e&1] = deriveKey(&j.secret, j.period, e)
	if old != nil && old.epoch == e-1 {
		ks.byParity[(e-1)&1] = old.byParity[(e-1)&1]
	} else {
		ks.byParity[(e-1)&1] = deriveKey(&j.secret, j.period, e-1)
	}
	j.keys.Store(ks)
	return ks
}

// epochAt numbers the period containing t, counted from the Unix epoch so
// that gateways sharing a key file and a synchronized clock agree on it.
func epochAt(t time.Time, period time.Duration) int64 {
	ns, p := t.UnixNano(), int64(period)
	e := ns / p
	if ns%p < 0 { // round toward minus infinity for times before 1970
		e--
	}
	return e
}

// computeMAC returns the macBits-bit MAC binding a cookie's low byte to the
// flow and the client's ISN. The message is built in a fixed-size array on
// the stack, so this allocates nothing.
func computeMAC(k *sipKey, client, server netip.AddrPort, clientISN uint32, low uint32) uint32 {
	var m [msgLen]byte
	ca, sa := client.Addr(), server.Addr()
	m[msgClientFamily] = family(ca)
	m[msgServerFamily] = family(sa)
	*(*[16]byte)(m[msgClientAddr:]) = ca.As16()
	*(*[16]byte)(m[msgServerAddr:]) = sa.As16()
	binary.BigEndian.PutUint16(m[msgClientPort:], client.Port())
	binary.BigEndian.PutUint16(m[msgServerPort:], server.Port())
	binary.BigEndian.PutUint32(m[msgClientISN:], clientISN)
	m[msgLowByte] = byte(low)
	return uint32(sipHash24(*k, m[:])) & macMask
}

// family tags an address with its family, because As16 writes an IPv4
// address and its v4-mapped IPv6 form identically. The zero Addr gets 0.
func family(a netip.Addr) byte {
	switch {
	case a.Is4():
		return 4
	case a.Is6():
		return 6
	}
	return 0
}

// EpochKeys are the MAC keys of three consecutive epochs, for a packet
// path outside the Jar (the XDP program) that makes and checks the same
// cookies: it computes the epoch itself and takes the key of that epoch,
// or of the one before for a cookie of the other parity.
type EpochKeys struct {
	Period time.Duration
	// First is the epoch of Keys[0]; the others follow.
	First int64
	// Keys are SipHash keys as k0, k1: the words the algorithm takes.
	Keys [3][2]uint64
}

// EpochKeys returns the keys of the epoch before t's, t's own and the
// next: enough for a reader that refreshes them at least once an epoch
// to generate and validate across a rotation without waiting for the
// refresh.
func (j *Jar) EpochKeys(t time.Time) EpochKeys {
	e := epochAt(t, j.period)
	k := EpochKeys{Period: j.period, First: e - 1}
	for i := range k.Keys {
		sk := deriveKey(&j.secret, j.period, e-1+int64(i))
		k.Keys[i] = [2]uint64{sk.k0, sk.k1}
	}
	return k
}
