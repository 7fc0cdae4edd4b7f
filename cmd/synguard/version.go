package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3").
var version = "dev"

func versionString() string {
	v := version
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	return fmt.Sprintf("synguard %s %s %s/%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func printVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "version")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, versionString())
	return nil
}
