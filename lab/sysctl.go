package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/synguard/synguard/lab/netns"
)

// sysctl is one /proc/sys/ entry, named by its path below /proc/sys.
type sysctl struct {
	key, value string
}

// setSysctls writes the entries from a thread inside ns: /proc/sys/net
// resolves to the namespace of the thread that opens it.
func setSysctls(ns *netns.NS, entries []sysctl) error {
	return ns.Do(func() error {
		for _, s := range entries {
			path := filepath.Join("/proc/sys", s.key)
			if err := os.WriteFile(path, []byte(s.value+"\n"), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", s.key, s.value, ns.Name, err)
			}
		}
		return nil
	})
}

// runOutput runs a command in the current namespace and returns its
// standard output, with its standard error in the error on failure.
func runOutput(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
