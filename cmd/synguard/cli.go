package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// command is one synguard command or subcommand. The tree of them
// (commandTree) is the one place where commands are named and described:
// run dispatches along it, newFlagSet takes a command's usage line and
// description from it, and the tests walk it to check that every command
// answers -h.
type command struct {
	name    string   // as typed after the parent's name: "up"
	aliases []string // other words that select it: "--version"
	args    string   // what follows the command's path in the usage line of its run
	summary string   // one line in the parent's list of commands
	doc     string   // the description in its own -h; summary if empty
	example string   // command lines shown under "example:" in its -h, one a line

	// run runs the command with the arguments after its name. A command
	// with subcommands may have one too: it runs when no subcommand is
	// named (bench). run parses its flags with newFlagSet and parseArgs.
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) error
	subs []*command

	path string // the words after "synguard" that name it, "lab up"; set by commandTree
}

// commandTree returns synguard's commands.
func commandTree() *command {
	gatewayArgs := "(--config FILE | --protect ADDR:PORT[,ADDR:PORT...]) [flags]"
	root := &command{
		doc: "synguard shields TCP services from SYN floods.",
		example: "synguard run --protect 203.0.113.2:80,[2001:db8::2]:443 --mode auto\n" +
			"synguard help run",
		subs: []*command{
			{
				name:    "run",
				args:    gatewayArgs,
				summary: "protect services (iptables rules, NFQUEUE engine) until SIGINT/SIGTERM",
				doc: "Protects the services until SIGINT or SIGTERM: installs the rules, runs the engine and " +
					"removes the rules on the way out. The settings come from the flags, or from the YAML " +
					"file --config names (docs/config.md), whose top-level keys are the flags' names with " +
					"underscores; a flag given as well wins over the file's key, and --protect replaces " +
					"the file's protect and services lists.",
				example: "synguard run --protect 203.0.113.2:80 --mode always --metrics 127.0.0.1:9847\n" +
					"synguard run --config /etc/synguard/synguard.yaml --log-level debug",
				run: runGateway,
			},
			{
				name:    "rules",
				args:    gatewayArgs,
				summary: "print the rules 'run' would install, for the same flags and file",
				example: "synguard rules --protect 203.0.113.2:80 --local\n" +
					"synguard rules --config /etc/synguard/synguard.yaml",
				run: func(_ context.Context, args []string, stdout, stderr io.Writer) error {
					return printRules(args, stdout, stderr)
				},
			},
			{
				name:    "status",
				args:    "[--metrics HOST:PORT] [--watch] [--interval 1s]",
				summary: "show a running synguard's services, attacks, backends and queues (from its --metrics address)",
				doc: "Reads a running synguard's figures from its metrics address (synguard run --metrics " +
					"HOST:PORT) and prints one line per service: mode, half-open connections, SYNs, " +
					"SYN-ACKs, valid and invalid cookies and hand-offs per second, and the backend's " +
					"state; then each attack in progress with its heaviest source prefixes and their " +
					"spread; then the queues and the XDP fast path. --watch refreshes it until Ctrl-C.",
				example: "synguard status --metrics 127.0.0.1:9847 --watch",
				run:     runStatus,
			},
			{
				name:    "check",
				args:    "--config FILE [flags]",
				summary: "validate a configuration file (and flags) as 'run' reads it, changing nothing",
				doc: "Reads the configuration as 'run' would with the same flags, including the key file " +
					"it names, and changes nothing. Valid: prints a one-line summary and exits 0. " +
					"Otherwise prints the first mistake, with the file, line, column and key " +
					"(services[1].mode), and exits 2.",
				example: "synguard check --config /etc/synguard/synguard.yaml",
				run:     runCheck,
			},
			{
				name:    "lab",
				summary: "up|down|demo|serve|ha: a self-contained client/gateway/backend lab in network namespaces",
				example: "synguard lab demo\nsynguard lab up --name mylab",
				subs: []*command{
					{
						name:    "up",
						args:    "[--name PREFIX]",
						summary: "build the client / gateway / backend namespaces (no gateway running)",
						example: "synguard lab up --name mylab",
						run:     runLabUp,
					},
					{
						name:    "down",
						args:    "[--name PREFIX]",
						summary: "remove a lab's namespaces and the processes inside them",
						example: "synguard lab down --name mylab",
						run:     runLabDown,
					},
					{
						name: "demo",
						args: "[flags]",
						summary: "build a lab, run the gateway, a bounded spoofed SYN flood and legitimate " +
							"clients, print a live report every second, tear everything down",
						example: "synguard lab demo --mode auto --duration 30s --rate 50000",
						run:     runLabDemo,
					},
					{
						name:    "ha",
						summary: "up|down|demo: an active/standby gateway pair (keepalived, conntrackd) in namespaces",
						example: "synguard lab ha demo",
						subs: []*command{
							{
								name:    "up",
								args:    "[--name PREFIX] [--no-sync]",
								summary: "build the pair's lab: client, backend, switches, gw-a (master) and gw-b, each running conntrackd, synguard and keepalived with docs/ha's files",
								example: "synguard lab ha up && ip netns exec sgha-gw-b conntrack -L --mark 0x53470002",
								run:     runLabHAUp,
							},
							{
								name:    "down",
								args:    "[--name PREFIX]",
								summary: "remove an HA lab: its processes, namespaces and files",
								example: "synguard lab ha down --name sgha",
								run:     runLabHADown,
							},
							{
								name:    "demo",
								args:    "[flags]",
								summary: "build an HA lab, run a download and short connections, kill the master mid-way, print a line per second and a verdict, tear down",
								example: "synguard lab ha demo --size 256 --rate 16 --kill-after 5s",
								run:     runLabHADemo,
							},
						},
					},
					{
						name:    "serve",
						args:    "--listen ADDR:PORT [--backlog N]",
						summary: "serve the lab's HTTP backend on --listen (used inside the backend namespace)",
						example: "synguard lab serve --listen 203.0.113.2:80 --backlog 511",
						run:     runLabServe,
					},
				},
			},
			{
				name:    "bench",
				args:    "[flags]",
				summary: "benchmark synguard against kernel SYNPROXY under SYN or forged-ACK floods; flood: a bounded flood generator",
				doc: "Without a subcommand: build a lab and measure synguard (with its XDP fast path, and " +
					"without it as synguard-nfqueue; once per --queues count), kernel SYNPROXY and an " +
					"unprotected backend under SYN floods (--attack ack: forged ACKs) stepped up to the " +
					"generator's maximum; write report.md, report.json and plots.",
				example: "synguard bench --quick --out bench-out\n" +
					"synguard bench --attack ack --queues 1,2 --systems synguard,synproxy",
				run: runBenchScenarios,
				subs: []*command{
					{
						name: "flood",
						args: "--target ADDR:PORT [flags]",
						summary: "send a bounded SYN (or, --kind ack, forged-ACK) flood with spoofed sources from the benchmarking range " +
							"(198.18.0.0/15, or 2001:db8:ff00::/40 for IPv6), from the current network " +
							"namespace; stops at --count or --duration",
						example: "synguard bench flood --target 203.0.113.2:80 --rate 20000 --duration 10s",
						run:     runBenchFlood,
					},
					{
						name:    "report",
						args:    "--in FILE [--out DIR]",
						summary: "draw report.md and the plots again from a report.json",
						example: "synguard bench report --in bench-out/report.json --out plots",
						run:     runBenchReport,
					},
				},
			},
			{
				name:    "keygen",
				args:    "PATH",
				summary: "write a new 32-byte cookie key (mode 0600) for --key-file; never overwrites",
				doc: "Writes 32 random bytes to PATH, readable by its owner only, for gateways that " +
					"must accept each other's cookies (copy the file to each, pass --key-file PATH). " +
					"An existing file is never replaced: a fleet's key changes only on purpose.",
				example: "synguard keygen /etc/synguard/cookie.key",
				run:     runKeygen,
			},
			{
				name:    "version",
				aliases: []string{"--version", "-version"},
				summary: "print the version",
				example: "synguard version",
				run:     printVersion,
			},
		},
	}
	root.setPaths("")
	return root
}

func (c *command) setPaths(path string) {
	c.path = path
	for _, s := range c.subs {
		s.setPaths(strings.TrimSpace(path + " " + s.name))
	}
}

// all returns c and every command below it, parents first.
func (c *command) all() []*command {
	out := []*command{c}
	for _, s := range c.subs {
		out = append(out, s.all()...)
	}
	return out
}

// sub returns the subcommand that word selects, or nil.
func (c *command) sub(word string) *command {
	for _, s := range c.subs {
		if s.name == word || slices.Contains(s.aliases, word) {
			return s
		}
	}
	return nil
}

// find returns the command at path ("lab up"), or nil.
func (c *command) find(path string) *command {
	for _, w := range strings.Fields(path) {
		if c = c.sub(w); c == nil {
			return nil
		}
	}
	return c
}

// isHelp reports whether arg asks for help, as the flag package reads it.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "--h", "-help", "--help":
		return true
	}
	return false
}

// dispatch runs c with args: the subcommand args[0] names, or c's own run.
// Help is flag.ErrHelp once printed; run turns it into success.
func (c *command) dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(c.subs) == 0 {
		return c.run(ctx, args, stdout, stderr)
	}
	if len(args) > 0 {
		if s := c.sub(args[0]); s != nil {
			return s.dispatch(ctx, args[1:], stdout, stderr)
		}
		if c.path == "" && args[0] == "help" {
			// synguard help [command...]: that command's -h.
			return c.dispatch(ctx, append(slices.Clone(args[1:]), "-h"), stdout, stderr)
		}
	}
	switch {
	case c.run != nil && (len(args) == 0 || strings.HasPrefix(args[0], "-")):
		return c.run(ctx, args, stdout, stderr)
	case len(args) > 0 && isHelp(args[0]):
		c.printUsage(stdout, nil)
		return flag.ErrHelp
	}
	c.printUsage(stderr, nil)
	switch {
	case len(args) == 0 && c.path == "":
		return usagef("no command given")
	case len(args) == 0:
		return usagef("%s: no subcommand given", c.path)
	case c.path == "":
		return usagef("unknown command %q", args[0])
	}
	return usagef("%s: unknown subcommand %q", c.path, args[0])
}

// newFlagSet returns the flag set of the command at path: parsed with
// parseArgs, its -h prints to stdout the command's usage line
// ("usage: synguard lab up [--name PREFIX]"), description, subcommands
// and flags.
func newFlagSet(stdout io.Writer, path string) *flag.FlagSet {
	c := commandTree().find(path)
	if c == nil || c.run == nil {
		panic(fmt.Sprintf("synguard: no runnable command %q in the command tree", path))
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() { c.printUsage(fs.Output(), fs) }
	return fs
}

// parseArgs parses args, all flags, into fs (from newFlagSet). -h prints
// the command's usage to stdout and returns flag.ErrHelp, which the caller
// returns as it is: synguard exits 0. A bad flag or a stray argument is
// a usage error, one line, exit status 2.
func parseArgs(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	// The flag package prints errors and the usage to the output on a
	// bad flag too; only -h shows the usage, and errors are one line.
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return flag.ErrHelp
	case err != nil:
		return usagef("%s: %v", fs.Name(), err)
	case fs.NArg() > 0:
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// helpWidth is where usage texts are wrapped.
const helpWidth = 80

// printUsage writes c's help: the usage lines, the description, the
// subcommands and, with fs, the flags.
func (c *command) printUsage(w io.Writer, fs *flag.FlagSet) {
	name := strings.TrimSpace("synguard " + c.path)
	var lines []string
	if c.run != nil {
		lines = append(lines, strings.TrimSpace(name+" "+c.args))
	}
	if len(c.subs) > 0 {
		lines = append(lines, name+" <command> [flags]")
	}
	for i, l := range lines {
		prefix := "usage: "
		if i > 0 {
			prefix = "       "
		}
		fmt.Fprintln(w, prefix+l)
	}
	desc := c.doc
	if desc == "" {
		desc = c.summary
	}
	// A blank line in the description starts a paragraph.
	for para := range strings.SplitSeq(desc, "\n\n") {
		if para == "" {
			continue
		}
		fmt.Fprintln(w)
		for _, l := range wrap(para, helpWidth) {
			fmt.Fprintln(w, l)
		}
	}
	if c.example != "" {
		fmt.Fprintln(w, "\nexample:")
		for _, l := range strings.Split(c.example, "\n") {
			fmt.Fprintln(w, "  "+l)
		}
	}
	if len(c.subs) > 0 {
		fmt.Fprintln(w, "\ncommands:")
		col := 0
		for _, s := range c.subs {
			col = max(col, len(s.name))
		}
		col += 4 // two spaces before the name, two after
		for _, s := range c.subs {
			for i, l := range wrap(s.summary, helpWidth-col) {
				if i == 0 {
					fmt.Fprintf(w, "  %-*s%s\n", col-2, s.name, l)
				} else {
					fmt.Fprintf(w, "%*s%s\n", col, "", l)
				}
			}
		}
	}
	if fs != nil {
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags:")
			out := fs.Output()
			fs.SetOutput(w)
			fs.PrintDefaults()
			fs.SetOutput(out)
		}
	}
	if len(c.subs) > 0 {
		fmt.Fprintf(w, "\nRun '%s <command> -h' for a command's flags.\n", name)
	}
}

// wrap breaks s into lines of at most width bytes, at spaces; a longer
// word has a line of its own.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
