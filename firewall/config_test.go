package firewall

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" means valid
	}{
		{name: "valid v4", edit: func(*Config) {}},
		{name: "valid v4 and v6", edit: func(c *Config) {
			c.Services = append(c.Services, netip.MustParseAddrPort("[2001:db8::1]:443"))
		}},
		{name: "valid last queues", edit: func(c *Config) { c.Queue, c.Queues = 65528, 4 }},
		{name: "valid last queue pair", edit: func(c *Config) { c.Queue, c.Queues = 65534, 1 }},
		{name: "valid half the queue space", edit: func(c *Config) { c.Queue, c.Queues = 0, 32768 }},
		{name: "valid loopback in local mode", edit: func(c *Config) {
			c.Local = true
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:80")}
		}},
		{name: "no services", edit: func(c *Config) { c.Services = nil }, want: "no services"},
		{name: "port 0", edit: func(c *Config) {
			c.Services = append(c.Services, netip.MustParseAddrPort("203.0.113.2:0"))
		}, want: "service 2 (203.0.113.2:0): port 0"},
		{name: "zero AddrPort", edit: func(c *Config) { c.Services = []netip.AddrPort{{}} }, want: "no address"},
		{name: "unspecified v4", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80")}
		}, want: "unspecified"},
		{name: "unspecified v6", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("[::]:80")}
		}, want: "unspecified"},
		{name: "multicast v4", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("224.0.0.1:80")}
		}, want: "multicast"},
		{name: "multicast v6", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("[ff02::1]:80")}
		}, want: "multicast"},
		{name: "broadcast", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("255.255.255.255:80")}
		}, want: "broadcast"},
		{name: "zone", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%eth0]:80")}
		}, want: "zone"},
		{name: "v4-mapped v6", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("[::ffff:203.0.113.1]:80")}
		}, want: "write it as 203.0.113.1"},
		{name: "loopback in gateway mode", edit: func(c *Config) {
			c.Services = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:80")}
		}, want: "loopback"},
		{name: "duplicate", edit: func(c *Config) { c.Services = append(c.Services, c.Services[0]) }, want: "service 2 (203.0.113.1:80): listed twice"},
		{name: "zero queues", edit: func(c *Config) { c.Queues = 0 }, want: "Queues is 0"},
		{name: "queue range overflow", edit: func(c *Config) { c.Queue, c.Queues = 65529, 4 }, want: "queues 65529..65536 (4 for SYNs, as many for handshake completions)"},
		{name: "no room for the completion queue", edit: func(c *Config) { c.Queue, c.Queues = 65535, 1 }, want: "queues 65535..65536"},
		{name: "more than half the queue space", edit: func(c *Config) { c.Queue, c.Queues = 0, 32769 }, want: "queues 0..65537"},
		{name: "queue range overflow, max values", edit: func(c *Config) { c.Queue, c.Queues = 65535, 65535 }, want: "run past"},
		{name: "zero engine mark", edit: func(c *Config) { c.EngineMark = 0 }, want: "EngineMark is 0"},
		{name: "zero handoff mark", edit: func(c *Config) { c.HandoffMark = 0 }, want: "HandoffMark is 0"},
		{name: "equal marks", edit: func(c *Config) { c.HandoffMark = c.EngineMark }, want: "must differ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base("203.0.113.1:80")
			tt.edit(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate() = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}
