package lab_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/synguard/synguard/lab"
)

// serveLoopback runs ServeHTTP on a loopback listener of the current
// namespace (no privileges needed) until the test ends.
func serveLoopback(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lab.ServeHTTP(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func TestContentSHA256MatchesServedBody(t *testing.T) {
	addr := serveLoopback(t)
	for _, n := range []int64{0, 1, 31, 32, 33, 1000, 64<<10 - 1, 64 << 10, 1<<20 + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			resp, err := http.Get(fmt.Sprintf("http://%s/bytes/%d", addr, n))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			if resp.ContentLength != n {
				t.Fatalf("Content-Length %d, want %d", resp.ContentLength, n)
			}
			h := sha256.New()
			got, err := io.Copy(h, resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if got != n {
				t.Fatalf("body has %d bytes, want %d", got, n)
			}
			want := lab.ContentSHA256(n)
			if hex.EncodeToString(h.Sum(nil)) != hex.EncodeToString(want[:]) {
				t.Fatalf("served body SHA-256 %x, ContentSHA256 %x", h.Sum(nil), want)
			}
		})
	}
}

// The content is a specification shared by backends and clients running in
// different processes: pin it.
func TestContentIsStable(t *testing.T) {
	empty := sha256.Sum256(nil)
	if got := lab.ContentSHA256(0); got != empty {
		t.Fatalf("ContentSHA256(0) = %x, want the empty hash", got)
	}
	const golden1000 = "7e3a73e65418ebd2b4cfebfe5504db3d83ac664155e74c229d79343c297f2b1d"
	got := lab.ContentSHA256(1000)
	if hex.EncodeToString(got[:]) != golden1000 {
		t.Fatalf("ContentSHA256(1000) = %x, want %s", got, golden1000)
	}
	// Bodies of different lengths differ from the first byte, so a
	// truncated or mixed-up response cannot pass as another length's.
	a, b := make([]byte, 16), make([]byte, 16)
	_, _ = io.ReadFull(lab.NewContentReader(16), a)
	_, _ = io.ReadFull(lab.NewContentReader(17), b)
	if string(a) == string(b) {
		t.Fatal("bodies of length 16 and 17 share a prefix")
	}
}

func TestBackendRoutes(t *testing.T) {
	addr := serveLoopback(t)
	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", http.StatusOK, "ok"},
		{"/bytes/-1", http.StatusBadRequest, ""},
		{"/bytes/abc", http.StatusBadRequest, ""},
		{fmt.Sprintf("/bytes/%d", lab.MaxContentBytes+1), http.StatusBadRequest, ""},
		{"/nothing", http.StatusNotFound, ""},
	} {
		resp, err := http.Get("http://" + addr.String() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("GET %s: status %d, want %d", tt.path, resp.StatusCode, tt.status)
		}
		if tt.body != "" && string(body) != tt.body {
			t.Errorf("GET %s: body %q, want %q", tt.path, body, tt.body)
		}
	}
}

func TestProbeAndDownloadInCurrentNamespace(t *testing.T) {
	addr := serveLoopback(t)
	ctx := context.Background()
	r := lab.Probe(ctx, nil, addr, 2*time.Second)
	if !r.OK || r.Bytes != lab.ProbeBytes || r.Handshake <= 0 || r.Total < r.Handshake {
		t.Fatalf("probe: %+v", r)
	}
	const n = 3<<20 + 5
	sum, got, err := lab.Download(ctx, nil, addr, n)
	if err != nil {
		t.Fatal(err)
	}
	if got != n || sum != lab.ContentSHA256(n) {
		t.Fatalf("download: %d bytes, sum %x", got, sum)
	}

	// A closed port fails the probe, with the error and no bytes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	if r := lab.Probe(ctx, nil, closed, time.Second); r.OK || r.Err == nil || r.Bytes != 0 {
		t.Fatalf("probe of a closed port: %+v", r)
	}
}
