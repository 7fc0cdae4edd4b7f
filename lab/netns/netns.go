// Package netns creates, enters and removes Linux network namespaces.
//
// Namespaces are created with iproute2 (`ip netns add`), so they are visible
// to `ip netns exec` and to operators debugging a lab, and they can be
// entered in-process with [NS.Do] to open sockets inside them: a socket stays
// in the namespace it was created in, whichever goroutine uses it later.
package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// runDir is where iproute2 bind-mounts named namespaces.
const runDir = "/run/netns"

// NS is a named network namespace.
type NS struct {
	Name string
}

// Create makes a new named namespace with its loopback interface up.
func Create(ctx context.Context, name string) (*NS, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("invalid namespace name %q", name)
	}
	if err := Run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	ns := &NS{Name: name}
	if err := ns.Run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		_ = ns.Delete()
		return nil, fmt.Errorf("bring up loopback in %s: %w", name, err)
	}
	return ns, nil
}

// Delete removes the namespace. Processes still inside keep it alive until
// they exit, so callers stop their processes first.
func (ns *NS) Delete() error {
	if err := Run(context.Background(), "ip", "netns", "del", ns.Name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns.Name, err)
	}
	return nil
}

// Exists reports whether a namespace with this name is present.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(runDir, name))
	return err == nil
}

// List returns the names of all named namespaces.
func List() ([]string, error) {
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// Command returns a command that runs inside the namespace.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output
// in the error when it fails.
func (ns *NS) Run(ctx context.Context, name string, args ...string) error {
	return run(ns.Command(ctx, name, args...))
}

// Output runs a command inside the namespace and returns its standard output.
func (ns *NS) Output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := ns.Command(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Run runs a command in the current namespace, reporting its output on failure.
func Run(ctx context.Context, name string, args ...string) error {
	return run(exec.CommandContext(ctx, name, args...))
}

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs fn with the calling goroutine's OS thread switched into the
// namespace. Sockets fn opens belong to the namespace for their lifetime.
// fn must not start goroutines that expect to be inside the namespace.
func (ns *NS) Do(fn func() error) error {
	target, err := unix.Open(filepath.Join(runDir, ns.Name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns.Name, err)
	}
	defer unix.Close(target)

	runtime.LockOSThread()
	origin, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(origin)

	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", ns.Name, err)
	}
	fnErr := fn()
	if err := unix.Setns(origin, unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the wrong namespace: leave it locked so
		// the runtime terminates it with this goroutine instead of reusing it.
		return errors.Join(fnErr, fmt.Errorf("return from namespace %s: %w", ns.Name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}
