package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// A Runner carries out what Install and Remove do to the system: it runs
// the iptables tools and reads and writes sysctls, all in one network
// namespace. Host is the one for the calling process's namespace; tests
// use one that acts inside a namespace of their own.
type Runner interface {
	// Command returns a command that runs name with args.
	Command(ctx context.Context, name string, args ...string) *exec.Cmd
	// ReadSysctl returns the value of a sysctl such as
	// "net.ipv4.ip_forward", without the trailing newline.
	ReadSysctl(name string) (string, error)
	// WriteSysctl sets a sysctl.
	WriteSysctl(name, value string) error
}

// Host is the Runner for the network namespace of the calling process:
// commands run as its children and sysctls are the files under /proc/sys,
// which show the namespace of the thread that opens them.
type Host struct{}

// Command returns exec.CommandContext(ctx, name, args...).
func (Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}

// ReadSysctl reads /proc/sys/<name with dots as slashes>.
func (Host) ReadSysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// WriteSysctl writes value to /proc/sys/<name with dots as slashes>.
func (Host) WriteSysctl(name, value string) error {
	return os.WriteFile(sysctlPath(name), []byte(value+"\n"), 0)
}

func sysctlPath(name string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

func runnerOf(c Config) Runner {
	if c.Runner == nil {
		return Host{}
	}
	return c.Runner
}

// run runs name with args and stdin through r and returns its standard
// output. A failure names the command and carries its standard error.
func run(ctx context.Context, r Runner, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := r.Command(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s not found (synguard needs the iptables tools, nf_tables or legacy backend): %w", name, err)
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if line := failedLine(msg, stdin); line != "" {
		msg += "\nfailing input line: " + line
	}
	return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
}

// restoreErrorLine matches how iptables-restore names the input line it
// rejected.
var restoreErrorLine = regexp.MustCompile(`(?:Error occurred at line: |line )(\d+)`)

// failedLine returns the input line an iptables-restore error message
// points at, or "". A COMMIT line is not returned: the nf_tables backend
// blames it for any rule the kernel rejects when the table is committed,
// and the message itself is more telling.
func failedLine(msg string, input []byte) string {
	m := restoreErrorLine.FindStringSubmatch(msg)
	if m == nil || input == nil {
		return ""
	}
	n, err := strconv.Atoi(m[1])
	lines := strings.Split(string(input), "\n")
	if err != nil || n < 1 || n > len(lines) || lines[n-1] == "COMMIT" {
		return ""
	}
	return lines[n-1]
}
