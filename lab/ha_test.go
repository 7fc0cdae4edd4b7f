package lab_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/docs/ha"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// The production paths the lab moves into a gateway's own directory.
var haPaths = []string{"/etc/conntrackd/", "/var/run/conntrackd.ctl", "/var/lock/conntrack.lock"}

// TestHAReplacer: the lab changes the docs/ha files only on the lines that
// name one of the three paths, and leaves none of them behind.
func TestHAReplacer(t *testing.T) {
	const dir = "/run/synguard-lab/x/gw-a"
	r := lab.HAReplacer(dir)
	used := map[string]bool{}
	for _, name := range []string{ha.Keepalived, ha.Conntrackd, ha.PrimaryBackup} {
		b, err := fs.ReadFile(ha.Files, name)
		if err != nil {
			t.Fatal(err)
		}
		// The files built into synguard are the ones in the tree.
		disk, err := os.ReadFile(filepath.Join("../docs/ha", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(disk) != string(b) {
			t.Fatalf("%s: the embedded copy differs from docs/ha/%s", name, name)
		}
		in := strings.Split(string(b), "\n")
		out := strings.Split(r.Replace(string(b)), "\n")
		if len(in) != len(out) {
			t.Fatalf("%s: %d lines became %d", name, len(in), len(out))
		}
		for i := range in {
			names := false
			for _, p := range haPaths {
				if strings.Contains(in[i], p) {
					names, used[p] = true, true
				}
			}
			switch {
			case names && !strings.Contains(out[i], dir+"/"):
				t.Errorf("%s:%d: %q became %q, not a path in %s", name, i+1, in[i], out[i], dir)
			case !names && in[i] != out[i]:
				t.Errorf("%s:%d: %q changed to %q though it names no path the lab moves", name, i+1, in[i], out[i])
			}
			for _, p := range []string{"/etc/conntrackd", "/var/run/", "/var/lock/"} {
				if strings.Contains(out[i], p) {
					t.Errorf("%s:%d: %q still names %s", name, i+1, out[i], p)
				}
			}
		}
	}
	for _, p := range haPaths {
		if !used[p] {
			t.Errorf("no docs/ha file names %s: the replacer has a rule too many", p)
		}
	}
}

// TestHAKeepalivedAcceptsTheConfig: keepalived's own check passes the
// lab's copy of docs/ha/keepalived.conf for both gateways, in a namespace
// that has their interfaces.
func TestHAKeepalivedAcceptsTheConfig(t *testing.T) {
	roottest.Require(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("keepalived not installed; CI must install it")
		}
		t.Skip("needs keepalived")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := netns.Create(ctx, labName("kacfg"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	for _, iface := range []string{lab.HAClientIface, lab.HABackendIface} {
		if err := ns.Run(ctx, "ip", "link", "add", iface, "type", "veth", "peer", "name", iface+"-p"); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(lab.HARunDir, labName("kacfg"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := lab.HAReplacer(dir)
	for name, mode := range map[string]os.FileMode{ha.Keepalived: 0o600, ha.PrimaryBackup: 0o700} {
		b, err := fs.ReadFile(ha.Files, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(r.Replace(string(b))), mode); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, ha.Keepalived)
	for _, node := range []string{lab.NodeA, lab.NodeB} {
		if out, err := ns.Output(ctx, "keepalived", "--config-test", "-f", conf, "--config-id", node); err != nil {
			t.Errorf("keepalived --config-test --config-id %s: %v\n%s", node, err, out)
		}
	}
	// The check can fail: an unknown keyword.
	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(bad, []byte("vrrp_instance x {\n    interface to-client\n    virtual_router_id 300\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Output(ctx, "keepalived", "--config-test", "-f", bad); err == nil {
		t.Error("keepalived --config-test accepted a virtual_router_id of 300")
	}
}

func TestHADownAndUpNames(t *testing.T) {
	for _, name := range []string{"", "a/b", "../x", "has space", strings.Repeat("x", 40)} {
		if err := lab.HADown(context.Background(), name); err == nil {
			t.Errorf("HADown(%q) accepted the name", name)
		}
		if _, err := lab.HAUp(context.Background(), lab.HAConfig{Name: name}); err == nil {
			t.Errorf("HAUp(%q) accepted the name", name)
		}
	}
	// Nothing to remove is no error, twice over.
	for range 2 {
		if err := lab.HADown(context.Background(), labName("none")); err != nil {
			t.Errorf("HADown of a lab that does not exist: %v", err)
		}
	}
}

// TestHAUpLeavesOthersAlone: a lab whose names are taken fails and
// removes nothing of the other's.
func TestHAUpLeavesOthersAlone(t *testing.T) {
	roottest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := labName("hataken")
	taken, err := netns.Create(ctx, name+"-gw-b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Delete() })
	if _, err := lab.HAUp(ctx, lab.HAConfig{Name: name}); err == nil {
		t.Fatal("HAUp succeeded with one of its namespace names taken")
	}
	if !netns.Exists(taken.Name) {
		t.Error("the failed HAUp removed the other's namespace")
	}
	for _, n := range lab.HANamespaceNames(name) {
		if n != taken.Name && netns.Exists(n) {
			t.Errorf("the failed HAUp left %s", n)
		}
	}
}

// TestPacedDownload: a paced download checks what it got, and fails when
// the body is wrong or stops coming.
func TestPacedDownload(t *testing.T) {
	roottest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns, err := netns.Create(ctx, labName("paced"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	serveIn := func(h http.Handler) netip.AddrPort {
		ln, err := lab.Listen(ns, netip.MustParseAddrPort("127.0.0.1:0"), 0)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}

	good := serveIn(lab.Handler())
	d := &lab.PacedDownload{Size: 3 << 20, Rate: 8 << 20}
	if err := d.Run(ctx, ns, good); err != nil {
		t.Fatal(err)
	}
	if d.Received() != d.Size {
		t.Errorf("received %d of %d bytes", d.Received(), d.Size)
	}
	if c, ok := d.Client(); !ok || !c.Addr().IsLoopback() {
		t.Errorf("client address %v, %v", c, ok)
	}

	// The right length, the wrong content.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", r.PathValue("n"))
		w.Write(make([]byte, 1<<20)) // zeros
	})
	wrong := serveIn(mux)
	d = &lab.PacedDownload{Size: 1 << 20, Rate: 8 << 20}
	if err := d.Run(ctx, ns, wrong); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("a body of zeros: err = %v, want a checksum mismatch", err)
	}

	// Half the body, then silence.
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	mux = http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", r.PathValue("n"))
		w.Write(make([]byte, 512<<10))
		w.(http.Flusher).Flush()
		<-stop
	})
	silent := serveIn(mux)
	d = &lab.PacedDownload{Size: 1 << 20, Rate: 8 << 20, Stall: 300 * time.Millisecond}
	err = d.Run(ctx, ns, silent)
	if err == nil || !strings.Contains(err.Error(), "no data for") {
		t.Errorf("a stalled body: err = %v, want a stall", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("a stalled body: err = %v, want it to wrap the read timeout", err)
	}
	if d.LongestStall() < 300*time.Millisecond {
		t.Errorf("longest stall %v, want at least the 300ms it waited", d.LongestStall())
	}
}
