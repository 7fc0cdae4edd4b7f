package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/synguard/synguard/engine"
)

// FuzzLoad feeds arbitrary YAML to the file reader: it must return a
// configuration the engine and the firewall accept, or an error located
// in the file, and never panic.
func FuzzLoad(f *testing.F) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, tt := range badFiles {
		f.Add([]byte(tt.yaml))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.File != "fuzz.yaml" || e.Line < 1 || e.Column < 1 {
				t.Fatalf("error %q (%#v) is not located in the file", err, err)
			}
			return
		}
		gw := cfg.Gateway
		if len(gw.Services) == 0 || len(gw.Services) > engine.MaxServices {
			t.Fatalf("%d services", len(gw.Services))
		}
		if err := gw.Thresholds.Validate(); err != nil {
			t.Fatalf("top-level thresholds: %v", err)
		}
		if err := gw.FirewallConfig().Validate(); err != nil {
			t.Fatalf("the firewall refuses it: %v", err)
		}
		for _, s := range gw.Services {
			if err := s.Thresholds.Validate(); err != nil {
				t.Fatalf("service %s: %v", s.Addr, err)
			}
			if s.Mode != engine.ModeAlways && s.Mode != engine.ModeAuto && s.Mode != engine.ModeOff {
				t.Fatalf("service %s: mode %v", s.Addr, s.Mode)
			}
			for _, l := range [][]netip.Prefix{s.Allow, s.Deny} {
				if len(l) > engine.MaxSourcePrefixes {
					t.Fatalf("service %s: %d prefixes", s.Addr, len(l))
				}
				for _, p := range l {
					if !p.IsValid() || p.Addr().Is4() != s.Addr.Addr().Is4() {
						t.Fatalf("service %s: prefix %v", s.Addr, p)
					}
				}
			}
		}
	})
}
