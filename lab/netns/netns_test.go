package netns_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab/netns"
)

func TestCreateDoDelete(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	name := fmt.Sprintf("sgt-ns-%d", os.Getpid())
	ns, err := netns.Create(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	if !netns.Exists(name) {
		t.Fatalf("namespace %s not listed after Create", name)
	}

	// A listener opened inside the namespace must not be visible outside it:
	// the namespace has only a loopback interface.
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, err := ns.Output(ctx, "ss", "-Htln")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if !strings.Contains(out, fmt.Sprintf(":%d", port)) {
		t.Fatalf("listener on port %d not seen inside namespace; ss says:\n%s", port, out)
	}
	hostOut, err := netnsHostSS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(hostOut, fmt.Sprintf("127.0.0.1:%d ", port)) {
		t.Fatalf("listener leaked into the host namespace:\n%s", hostOut)
	}

	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(name) {
		t.Fatalf("namespace %s still present after Delete", name)
	}
}

func netnsHostSS(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "ss", "-Htln").Output()
	return string(out), err
}
