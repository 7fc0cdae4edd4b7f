package firewall

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCleanupScript turns a crashed run's saved ruleset
// (testdata/cleanup/iptables-save.txt: synguard's chains, jumped to twice,
// next to the operator's, with look-alike names and a comment that reads
// like a jump) into the script that removes synguard's jumps and chains and
// nothing else (testdata/cleanup/script.golden).
func TestCleanupScript(t *testing.T) {
	saved, err := os.ReadFile(filepath.Join("testdata", "cleanup", "iptables-save.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := cleanupScript(saved)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "cleanup/script.golden", got)

	got, err = cleanupScript([]byte("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"))
	if err != nil || got != "" {
		t.Errorf("nothing to clean: got %q, %v; want \"\", nil", got, err)
	}
}

// missingTools runs every command from a directory that does not exist,
// as if the iptables tools were not installed. It never touches the
// host's sysctls.
type missingTools struct{}

func (missingTools) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "/nonexistent/synguard-test/"+name, args...)
}

func (missingTools) ReadSysctl(string) (string, error) {
	return "", errors.New("no sysctls in this test")
}
func (missingTools) WriteSysctl(string, string) error { return errors.New("no sysctls in this test") }

func TestMissingBinary(t *testing.T) {
	c := base("203.0.113.10:80")
	c.Runner = missingTools{}
	inst, err := Install(context.Background(), c)
	if err == nil {
		_ = inst.Remove(context.Background())
		t.Fatal("Install succeeded without iptables")
	}
	if !strings.Contains(err.Error(), "iptables-save not found") {
		t.Errorf("Install error %q does not say iptables-save is missing", err)
	}
	if !errors.Is(err, exec.ErrNotFound) && !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Install error %q lost the cause", err)
	}

	err = removeLeftovers(context.Background(), missingTools{})
	for _, tool := range []string{"iptables-save not found", "ip6tables-save not found"} {
		if err == nil || !strings.Contains(err.Error(), tool) {
			t.Errorf("removeLeftovers error %v does not say %q", err, tool)
		}
	}
}

func TestInstallRejectsBadConfig(t *testing.T) {
	c := base("203.0.113.10:80")
	c.Queues = 0
	c.Runner = missingTools{} // nothing may run before validation
	_, err := Install(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "Queues is 0") {
		t.Fatalf("Install error = %v, want the validation error", err)
	}
}

func TestFailedLine(t *testing.T) {
	input := []byte("*raw\n:X - [0:0]\n-A X -j BOGUS\nCOMMIT\n")
	tests := []struct{ msg, want string }{
		{"ip6tables-restore v1.8.9 (nf_tables): Chain 'BOGUS' does not exist\nError occurred at line: 3\nTry `ip6tables-restore -h'", "-A X -j BOGUS"},
		{"iptables-restore: line 2 failed", ":X - [0:0]"},
		{"iptables-restore: line 99 failed", ""},
		{"Chain 'BOGUS' does not exist\nError occurred at line: 4", ""}, // COMMIT
		{"something else", ""},
	}
	for _, tt := range tests {
		if got := failedLine(tt.msg, input); got != tt.want {
			t.Errorf("failedLine(%q) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}
