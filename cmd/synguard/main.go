// Command synguard shields TCP services from SYN floods. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// usageError is a bad command line: reported in one line, exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

const usage = `usage: synguard <command> [flags]

commands:
  run      protect services (iptables rules, NFQUEUE engine) until SIGINT/SIGTERM
  rules    print the rules 'run' would install, for the same flags
  lab      up|down|demo: a self-contained client/gateway/backend lab in namespaces
  bench    benchmark synguard against kernel SYNPROXY under SYN floods; flood: a bounded SYN flood generator
  version  print the version

Run 'synguard <command> -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func exitCode(err error, stderr io.Writer) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "synguard: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "synguard: %v\n", err)
		return 1
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usagef("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runGateway(ctx, rest, stdout, stderr)
	case "rules":
		return printRules(rest, stdout, stderr)
	case "lab":
		return runLab(ctx, rest, stdout, stderr)
	case "bench":
		return runBench(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usagef("unknown command %q", cmd)
}
