// Command synguard shields TCP services from SYN floods. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
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

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go stopOnSignals(sigs, cancel, os.Stderr, os.Exit)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// stopOnSignals cancels the command at the first SIGINT or SIGTERM, so it
// can clean up, and exits at once on the second: an operator who asks
// twice does not wait. What is left behind (rules, a sysctl) the next
// `synguard run` removes; an XDP program goes with the process.
func stopOnSignals(sigs <-chan os.Signal, cancel func(), stderr io.Writer, exit func(int)) {
	first := <-sigs
	cancel()
	second := <-sigs
	fmt.Fprintf(stderr, "synguard: %v after %v: exiting without finishing the cleanup\n", second, first)
	exit(exitInterrupted)
}

// exitInterrupted is the exit status of a cleanup cut short: 128 + SIGINT,
// as shells report an interrupted command.
const exitInterrupted = 130

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

// run runs the command line args (without the program name). Help asked
// for with -h, --help or "help" is success.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := commandTree().dispatch(ctx, args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
