package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/synguard/synguard/cookies"
)

// runKeygen writes a new cookie key file for --key-file: 32 random bytes,
// mode 0600, never over an existing file (replacing a fleet's shared key
// by accident would break cookie validation between its gateways).
func runKeygen(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "keygen")
	var path string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		path, args = args[0], args[1:]
	}
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if path == "" {
		return usagef("keygen: want the PATH of the key file to write")
	}
	if err := cookies.WriteKeyFile(path); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote a %d-byte cookie key to %s (mode 0600); copy it to every gateway that must accept the same cookies and pass it with --key-file\n", cookies.KeySize, path)
	return nil
}
