package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/synguard/synguard/lab"
)

const labUsage = `usage: synguard lab <up|down|demo|serve> [flags]

  up     build the client / gateway / backend namespaces (no gateway running)
  down   remove a lab's namespaces and the processes inside them
  demo   build a lab, run the gateway, a bounded spoofed SYN flood and legitimate
         clients, print a live report every second, tear everything down
  serve  serve the lab's HTTP backend on --listen (used inside the backend namespace)
`

// defaultLabName prefixes the namespaces of labs started from the CLI.
const defaultLabName = "sglab"

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, labUsage)
		return usagef("lab: no subcommand given")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "up":
		fs := flag.NewFlagSet("lab up", flag.ContinueOnError)
		name := fs.String("name", defaultLabName, "namespace name `prefix`")
		if err := parseFlags(fs, rest); err != nil {
			return helpOK(err)
		}
		t, err := lab.Up(ctx, lab.Config{Name: *name})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "lab %s up: client %s (ns %s), gateway (ns %s), backend %s (ns %s)\n",
			t.Name, t.ClientAddr, t.Client.Name, t.Gateway.Name, t.BackendAddr, t.Backend.Name)
		return nil
	case "down":
		fs := flag.NewFlagSet("lab down", flag.ContinueOnError)
		name := fs.String("name", defaultLabName, "namespace name `prefix`")
		if err := parseFlags(fs, rest); err != nil {
			return helpOK(err)
		}
		return lab.DownAll(ctx, *name)
	case "demo":
		fs := flag.NewFlagSet("lab demo", flag.ContinueOnError)
		var d lab.DemoConfig
		fs.StringVar(&d.Name, "name", defaultLabName+"demo", "namespace name `prefix`")
		fs.DurationVar(&d.Duration, "duration", 20*time.Second, "how long the flood runs")
		fs.IntVar(&d.FloodRate, "rate", 20000, "spoofed SYNs per `second`")
		fs.IntVar(&d.Clients, "clients", 10, "legitimate client connections per `second`")
		fs.StringVar(&d.Mode, "mode", "always", "the gateway's `mode`: always (every SYN gets a cookie: no flood SYN reaches the backend) or auto (watch it switch)")
		if err := parseFlags(fs, rest); err != nil {
			return helpOK(err)
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
	case "serve":
		fs := flag.NewFlagSet("lab serve", flag.ContinueOnError)
		listen := fs.String("listen", "", "`ADDR:PORT` to serve the lab backend on")
		backlog := fs.Int("backlog", 0, "listen backlog (0: the system's)")
		if err := parseFlags(fs, rest); err != nil {
			return helpOK(err)
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
	fmt.Fprint(stderr, labUsage)
	return usagef("lab: unknown subcommand %q", sub)
}
