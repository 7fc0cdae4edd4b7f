package cookies

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadKeyFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := bytes.Repeat([]byte{0xa5}, KeySize)

	tests := []struct {
		name    string
		content []byte // nil: create no file
		mode    fs.FileMode
		dir     bool
		want    []string // substrings the error must contain, besides the path
		notExst bool
	}{
		{name: "missing", notExst: true, want: []string{"no such file"}},
		{name: "empty", content: []byte{}, mode: 0o600, want: []string{"0 bytes", "exactly 32"}},
		{name: "short", content: good[:31], mode: 0o600, want: []string{"31 bytes", "exactly 32"}},
		{name: "long", content: append(good, 0), mode: 0o600, want: []string{"33 bytes", "exactly 32"}},
		{name: "hex text", content: []byte(strings.Repeat("a5", KeySize) + "\n"), mode: 0o600, want: []string{"65 bytes"}},
		{name: "mode 0644", content: good, mode: 0o644, want: []string{"0644", "chmod 600"}},
		{name: "mode 0640", content: good, mode: 0o640, want: []string{"0640", "chmod 600"}},
		{name: "mode 0602", content: good, mode: 0o602, want: []string{"0602", "chmod 600"}},
		{name: "all zero", content: make([]byte, KeySize), mode: 0o600, want: []string{"all zero"}},
		{name: "directory", dir: true, want: []string{"not a regular file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			switch {
			case tt.dir:
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			case tt.content != nil:
				if err := os.WriteFile(path, tt.content, tt.mode); err != nil {
					t.Fatal(err)
				}
				// WriteFile's mode is filtered by the umask; set it exactly.
				if err := os.Chmod(path, tt.mode); err != nil {
					t.Fatal(err)
				}
			}

			_, err := LoadKeyFile(path)
			if err == nil {
				t.Fatal("LoadKeyFile succeeded")
			}
			msg := err.Error()
			for _, w := range append(tt.want, path) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			if tt.notExst && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %q does not wrap fs.ErrNotExist", msg)
			}

			// New reports the same problem.
			if _, err := New(Config{KeyFile: path}); err == nil {
				t.Error("New accepted the key file")
			}
		})
	}
}

func TestWriteKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	for _, p := range []string{p1, p2} {
		if err := WriteKeyFile(p); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 || st.Size() != KeySize {
			t.Errorf("%s: mode %v size %d, want 0600 and %d bytes", p, st.Mode().Perm(), st.Size(), KeySize)
		}
	}

	k1, err := LoadKeyFile(p1)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadKeyFile(p2)
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Error("two fresh key files hold the same key")
	}
	raw, err := os.ReadFile(p1)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, k1[:]) {
		t.Error("LoadKeyFile returned something other than the file's bytes")
	}

	// An existing key is never replaced.
	err = WriteKeyFile(p1)
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), p1) {
		t.Errorf("WriteKeyFile over an existing file: error %v, want one wrapping fs.ErrExist naming the path", err)
	}
	if again, err := LoadKeyFile(p1); err != nil || again != k1 {
		t.Errorf("existing key file changed or broke: %v", err)
	}
}

// TestEpochKeysMatchTheJar: the keys handed to another packet path are
// the ones the jar itself uses, for the epochs before, at and after t.
func TestEpochKeysMatchTheJar(t *testing.T) {
	var secret [KeySize]byte
	for i := range secret {
		secret[i] = byte(i)
	}
	now := time.Unix(1_800_000_000, 0)
	j := newJar(secret, 30*time.Second, func() time.Time { return now })
	k := j.EpochKeys(now)
	e := epochAt(now, 30*time.Second)
	if k.First != e-1 || k.Period != 30*time.Second {
		t.Fatalf("first epoch %d period %v, want %d and 30s", k.First, k.Period, e-1)
	}
	ks := j.keysAt(now)
	for i, epoch := range []int64{e - 1, e, e + 1} {
		want := deriveKey(&secret, 30*time.Second, epoch)
		if k.Keys[i] != [2]uint64{want.k0, want.k1} {
			t.Errorf("key %d (epoch %d) = %x, want %x", i, epoch, k.Keys[i], want)
		}
		if epoch != e+1 {
			if got := ks.byParity[epoch&1]; got != want {
				t.Errorf("jar's key of epoch %d = %x, want %x", epoch, got, want)
			}
		}
	}
}
