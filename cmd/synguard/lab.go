package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/synguard/synguard/lab"
)

// defaultLabName prefixes the namespaces of labs started from the CLI.
const defaultLabName = "sglab"

func runLabUp(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "lab up")
	name := fs.String("name", defaultLabName, "namespace name `prefix`")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	t, err := lab.Up(ctx, lab.Config{Name: *name})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %s up: client %s (ns %s), gateway (ns %s), backend %s (ns %s)\n",
		t.Name, t.ClientAddr, t.Client.Name, t.Gateway.Name, t.BackendAddr, t.Backend.Name)
	return nil
}

func runLabDown(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "lab down")
	name := fs.String("name", defaultLabName, "namespace name `prefix`")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	return lab.DownAll(ctx, *name)
}

func runLabDemo(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "lab demo")
	var d lab.DemoConfig
	fs.StringVar(&d.Name, "name", defaultLabName+"demo", "namespace name `prefix`")
	fs.DurationVar(&d.Duration, "duration", 20*time.Second, "how long the flood runs")
	fs.IntVar(&d.FloodRate, "rate", 20000, "spoofed SYNs per second")
	fs.IntVar(&d.Clients, "clients", 10, "legitimate client connections per second")
	fs.StringVar(&d.Mode, "mode", "always", "the gateway's `mode`: always (every SYN gets a cookie: no flood SYN reaches the backend) or auto (watch it switch)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if d.Duration <= 0 || d.Duration > 10*time.Minute {
		return usagef("lab demo --duration %s: want 1s..10m", d.Duration)
	}
	if d.Mode != "always" && d.Mode != "auto" && d.Mode != "off" {
		return usagef("lab demo --mode %q: want always, auto or off", d.Mode)
	}
	if d.FloodRate < 1 || d.FloodRate > 1_000_000 || d.Clients < 1 || d.Clients > 1000 {
		return usagef("lab demo: --rate must be 1..1000000 and --clients 1..1000")
	}
	return lab.Demo(ctx, d, stdout)
}

func runLabServe(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "lab serve")
	listen := fs.String("listen", "", "`ADDR:PORT` to serve the lab backend on")
	backlog := fs.Int("backlog", 0, "listen backlog (0: the system's)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return usagef("lab serve --listen %q: want ADDR:PORT", *listen)
	}
	ln, err := lab.Listen(nil, addr, *backlog)
	if err != nil {
		return err
	}
	return lab.ServeHTTP(ctx, ln)
}
