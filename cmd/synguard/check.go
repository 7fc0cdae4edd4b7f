package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/synguard/synguard/config"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
)

// runCheck validates a configuration as run would read it, changing
// nothing: a file that passes starts (unless the system refuses what it
// asks for, a queue already taken or a link without XDP).
func runCheck(_ context.Context, args []string, stdout, _ io.Writer) error {
	cfg, err := loadCommand("check", args, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, summary(cfg))
	return nil
}

// summary describes cfg in one line: "ok: 3 services (2 auto, 1 always),
// ...".
func summary(cfg config.Config) string {
	gw := cfg.Gateway
	var modes []string
	for _, m := range []engine.Mode{engine.ModeAuto, engine.ModeAlways, engine.ModeOff} {
		n := 0
		for _, s := range gw.Services {
			if s.Mode == m {
				n++
			}
		}
		if n > 0 {
			modes = append(modes, fmt.Sprintf("%d %s", n, m))
		}
	}
	lists := 0
	for _, s := range gw.Services {
		if len(s.Allow) > 0 || len(s.Deny) > 0 {
			lists++
		}
	}
	services := "services"
	if len(gw.Services) == 1 {
		services = "service"
	}
	where := "forward"
	if gw.Local {
		where = "local"
	}
	fail := "closed"
	if gw.FailOpen {
		fail = "open"
	}
	fw := gw.FirewallConfig()
	queues := fmt.Sprintf("SYN %s, completion %s", queuesName(fw.SYNQueues()), queuesName(fw.CompletionQueues()))
	out := fmt.Sprintf("ok: %d %s (%s)", len(gw.Services), services, strings.Join(modes, ", "))
	if lists > 0 {
		out += fmt.Sprintf(", %d with allow/deny lists", lists)
	}
	return out + fmt.Sprintf("; %s, %s, fail %s, xdp %s", where, queues, fail, gw.XDP)
}

// queuesName is "queue 7" or "queues 7..8".
func queuesName(r firewall.QueueRange) string {
	if r.First == r.Last {
		return fmt.Sprintf("queue %d", r.First)
	}
	return "queues " + r.String()
}
