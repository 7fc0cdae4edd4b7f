package nf

import "testing"

// The values travel to the kernel as they are: a verdict in
// NFQA_VERDICT_HDR, a hook as nfqnl_msg_packet_hdr reports it.
func TestValuesAreTheKernels(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want uint8
	}{
		{"NF_DROP", uint8(Drop), 0},
		{"NF_ACCEPT", uint8(Accept), 1},
		{"NF_INET_PRE_ROUTING", uint8(Prerouting), 0},
		{"NF_INET_LOCAL_IN", uint8(Input), 1},
		{"NF_INET_FORWARD", uint8(Forward), 2},
		{"NF_INET_LOCAL_OUT", uint8(Output), 3},
		{"NF_INET_POST_ROUTING", uint8(Postrouting), 4},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct {
		in   interface{ String() string }
		want string
	}{
		{Drop, "drop"}, {Accept, "accept"}, {Verdict(7), "verdict(7)"},
		{Hold, "hold"}, {AcceptRewritten, "accept_rewritten"},
		{Prerouting, "prerouting"}, {Forward, "forward"}, {Unknown, "hook(255)"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// Hold and AcceptRewritten are no kernel verdicts: their values are above
// NF_MAX_VERDICT (NF_STOP, 5), so the kernel refuses them (EINVAL) instead
// of reading NF_STOLEN, NF_QUEUE or NF_REPEAT, and they differ from each
// other and from Drop and Accept. Verdict numbers travel in the low byte
// of NFQA_VERDICT_HDR's verdict (NF_VERDICT_MASK), so a uint8 covers every
// value the kernel could read.
func TestUserspaceVerdictsAreNoKernels(t *testing.T) {
	const nfMaxVerdict = 5 // NF_STOP
	seen := map[Verdict]bool{Drop: true, Accept: true}
	for _, v := range []Verdict{Hold, AcceptRewritten} {
		if uint8(v) <= nfMaxVerdict {
			t.Errorf("%v = %d, a kernel verdict (0..%d)", v, uint8(v), nfMaxVerdict)
		}
		if seen[v] {
			t.Errorf("%v = %d is taken by another verdict", v, uint8(v))
		}
		seen[v] = true
	}
}
