package xdp

import (
	"slices"
	"testing"
)

func TestParseMode(t *testing.T) {
	for _, name := range []string{"auto", "native", "generic", "tc", "off"} {
		m, err := ParseMode(name)
		if err != nil {
			t.Fatalf("ParseMode(%q): %v", name, err)
		}
		if m.String() != name {
			t.Errorf("ParseMode(%q).String() = %q", name, m)
		}
	}
	for _, bad := range []string{"", "TC", "xdp", "skb", "drv"} {
		if _, err := ParseMode(bad); err == nil {
			t.Errorf("ParseMode(%q) succeeded", bad)
		}
	}
}

// What auto tries, in order: never native XDP on veth (its XDP_TX frames
// are lost without a program on the peer), tc before generic XDP.
func TestCandidates(t *testing.T) {
	for _, tt := range []struct {
		mode   Mode
		driver string
		want   []Mode
	}{
		{ModeAuto, "veth", []Mode{ModeTC, ModeGeneric}},
		{ModeAuto, "virtio_net", []Mode{ModeNative, ModeTC, ModeGeneric}},
		{ModeAuto, "", []Mode{ModeNative, ModeTC, ModeGeneric}},
		{ModeNative, "veth", []Mode{ModeNative}},
		{ModeGeneric, "mlx5_core", []Mode{ModeGeneric}},
		{ModeTC, "virtio_net", []Mode{ModeTC}},
	} {
		if got := candidates(tt.mode, tt.driver); !slices.Equal(got, tt.want) {
			t.Errorf("candidates(%s, %q) = %v, want %v", tt.mode, tt.driver, got, tt.want)
		}
	}
}
