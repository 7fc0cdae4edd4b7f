package lab

import (
	"strings"
	"testing"
)

func TestParseTCPExt(t *testing.T) {
	const netstat = "TcpExt: SyncookiesSent TSEcrRejected TCPSynRetrans\n" +
		"TcpExt: 3 1 12\n" +
		"IpExt: InNoRoutes InTruncatedPkts\n" +
		"IpExt: 0 0\n"
	got, err := parseTCPExt([]byte(netstat))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"SyncookiesSent": 3, "TSEcrRejected": 1, "TCPSynRetrans": 12}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}

	for _, tt := range []struct{ name, in, err string }{
		{"no TcpExt", "IpExt: InNoRoutes\nIpExt: 0\n", "no TcpExt values"},
		{"names only", "TcpExt: A B\n", "no TcpExt values"},
		{"short values", "TcpExt: A B\nTcpExt: 1\n", "2 TcpExt names, 1 values"},
		{"not a number", "TcpExt: A B\nTcpExt: 1 x\n", "TcpExt B"},
	} {
		if _, err := parseTCPExt([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want one with %q", tt.name, err, tt.err)
		}
	}
}
