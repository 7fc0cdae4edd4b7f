package config

import "strings"

// restartValues give, for each key a reload cannot change, its value in
// a configuration, comparable with ==.
var restartValues = map[string]func(c *Config) any{
	"metrics":        func(c *Config) any { return c.Gateway.MetricsAddr },
	"queue":          func(c *Config) any { return c.Gateway.Queue },
	"queues":         func(c *Config) any { return c.Gateway.Queues },
	"local":          func(c *Config) any { return c.Gateway.Local },
	"key_file":       func(c *Config) any { return c.Gateway.KeyFile },
	"fail":           func(c *Config) any { return c.Gateway.FailOpen },
	"reply_path":     func(c *Config) any { return c.Gateway.ReplyPath },
	"xdp":            func(c *Config) any { return c.Gateway.XDP },
	"xdp_interfaces": func(c *Config) any { return strings.Join(c.Gateway.XDPInterfaces, ",") },
	"max_pending":    func(c *Config) any { return c.Gateway.MaxPending },
	"early_data":     func(c *Config) any { return c.Gateway.EarlyData },
	"log_format":     func(c *Config) any { return c.LogFormat },
	"log_level":      func(c *Config) any { return c.LogLevel },
	"stats_interval": func(c *Config) any { return c.Gateway.StatsInterval },
	"capture_dir":    func(c *Config) any { return c.Gateway.CaptureDir },
}

// RestartNeeded returns the keys whose values differ between old and
// next that only a restart can change (queues, sockets, links, the
// cookie key and the logger are set up once), in the file's order; none
// means a reload can apply next. The key file's contents are read at
// start only: a new key at the same path needs a restart too, which this
// cannot see.
func RestartNeeded(old, next Config) []string {
	var out []string
	for _, k := range keys {
		if !k.restart {
			continue
		}
		value := restartValues[k.name]
		if value(&old) != value(&next) {
			out = append(out, k.name)
		}
	}
	return out
}

// Reloadable reports whether a reload can change key name (a top-level
// key, or services).
func Reloadable(name string) bool {
	if k, ok := lookup(name); ok {
		return !k.restart
	}
	return name == keyServices
}
