package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/synguard/synguard/lab"
)

// defaultHAName prefixes the namespaces of HA labs started from the CLI.
const defaultHAName = "sgha"

// checkHAMode refuses a --mode synguard does not have.
func checkHAMode(path, mode string) error {
	if mode != "always" && mode != "auto" && mode != "off" {
		return usagef("%s --mode %q: want always, auto or off", path, mode)
	}
	return nil
}

func runLabHAUp(ctx context.Context, args []string, stdout, _ io.Writer) error {
	var cfg lab.HAConfig
	fs := newFlagSet(stdout, "lab ha up")
	fs.StringVar(&cfg.Name, "name", defaultHAName, "namespace name `prefix`")
	fs.StringVar(&cfg.Mode, "mode", "always", "the gateways' synguard `mode`")
	fs.BoolVar(&cfg.NoSync, "no-sync", false, "run no conntrackd: the negative control, in which flows die with their gateway")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if err := checkHAMode("lab ha up", cfg.Mode); err != nil {
		return err
	}
	h, err := lab.HAUp(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "HA lab %s up: client %s (ns %s), backend %s (ns %s); gw-a (ns %s-%s) is master, gw-b (ns %s-%s) standby\n",
		h.Name, lab.HAClientAddr, h.Client.Name, h.Service, h.Backend.Name, h.Name, lab.NodeA, h.Name, lab.NodeB)
	fmt.Fprintf(stdout, "files and logs: %s; each gateway's metrics and dashboard: %s inside its namespace\n", h.Dir, lab.HAMetricsAddr)
	fmt.Fprintf(stdout, "try: ip netns exec %s-%s curl -s %s/metrics | grep handoff_entries\n", h.Name, lab.NodeB, lab.HAMetricsAddr)
	fmt.Fprintf(stdout, "remove it with: synguard lab ha down --name %s\n", h.Name)
	return nil
}

func runLabHADown(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet(stdout, "lab ha down")
	name := fs.String("name", defaultHAName, "namespace name `prefix`")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	return lab.HADown(ctx, *name)
}

func runLabHADemo(ctx context.Context, args []string, stdout, _ io.Writer) error {
	var cfg lab.HADemoConfig
	fs := newFlagSet(stdout, "lab ha demo")
	fs.StringVar(&cfg.Name, "name", defaultHAName+"demo", "namespace name `prefix`")
	fs.StringVar(&cfg.Mode, "mode", "always", "the gateways' synguard `mode`")
	fs.BoolVar(&cfg.NoSync, "no-sync", false, "run no conntrackd: the negative control, in which the download breaks")
	sizeMiB := fs.Int("size", 256, "download length in `MiB`")
	rateMiB := fs.Int("rate", 16, "download pace in `MiB` per second")
	fs.IntVar(&cfg.Conns, "conns", 100, "short connections per second while the download runs")
	fs.DurationVar(&cfg.KillAfter, "kill-after", 5*time.Second, "when gw-a, the master, dies")
	fs.DurationVar(&cfg.Failback, "failback", 0, "boot gw-a again this long after its death (0: never)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if err := checkHAMode("lab ha demo", cfg.Mode); err != nil {
		return err
	}
	switch {
	case *sizeMiB < 1 || *sizeMiB > 4096 || *rateMiB < 1 || *rateMiB > 1024:
		return usagef("lab ha demo: --size must be 1..4096 and --rate 1..1024")
	case cfg.Conns < 1 || cfg.Conns > 1000:
		return usagef("lab ha demo --conns %d: want 1..1000", cfg.Conns)
	case cfg.KillAfter <= 0 || cfg.KillAfter > 10*time.Minute || cfg.Failback < 0 || cfg.Failback > 10*time.Minute:
		return usagef("lab ha demo: --kill-after must be 1s..10m and --failback 0..10m")
	}
	cfg.Size, cfg.Rate = int64(*sizeMiB)<<20, int64(*rateMiB)<<20
	return lab.HADemo(ctx, cfg, stdout)
}
