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
		{Prerouting, "prerouting"}, {Forward, "forward"}, {Unknown, "hook(255)"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}
