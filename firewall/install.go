package firewall

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
)

// Installed is a ruleset and sysctl settings applied by Install. Its
// methods may be called concurrently.
type Installed struct {
	runner Runner

	mu        sync.Mutex
	cfg       Config // in force: Install's, or the last Replace's
	removed   bool   // Remove was called: Check, Restore and Replace stop
	rulesGone bool
	sysctls   []sysctlChange
	record    string // path of this run's sysctl record, "" if none (see sysctlrecord.go)
}

// sysctlChange is a sysctl Install changed.
type sysctlChange struct {
	name, old, set string
	restored       bool
}

// Install applies the rules of c (see Rules) and the sysctls synguard
// needs. It first removes whatever an earlier run left behind (see
// RemoveLeftovers), then applies each family's rules in one
// `iptables-restore --noflush` transaction, and last sets the sysctls,
// remembering the values it replaced. If any step fails, what was done is
// undone and the error says which step failed.
func Install(ctx context.Context, c Config) (*Installed, error) {
	rs, err := Rules(c)
	if err != nil {
		return nil, err
	}
	r := runnerOf(c)
	if err := removeLeftovers(ctx, r); err != nil {
		return nil, fmt.Errorf("firewall: remove leftovers of an earlier run: %w", err)
	}
	i := &Installed{runner: r, cfg: c.clone()}
	for _, f := range families {
		text := f.rules(rs)
		if text == "" {
			continue
		}
		if _, err := run(ctx, r, []byte(text), f.restore, "--noflush", "--wait"); err != nil {
			return nil, i.undo(ctx, fmt.Errorf("firewall: install %s rules: %w", f.name, err))
		}
	}
	// After the rules: their conntrack matches load nf_conntrack, which
	// registers nf_conntrack_tcp_loose.
	recPath, rec := readRecord(r)
	for _, s := range sysctlsFor(c) {
		old, err := r.ReadSysctl(s.name)
		if errors.Is(err, fs.ErrNotExist) && s.module != "" {
			err = fmt.Errorf("%w (is the kernel module %s loaded?)", err, s.module)
		}
		if err != nil {
			return nil, i.undo(ctx, fmt.Errorf("firewall: read sysctl %s: %w", s.name, err))
		}
		if prev, ok := rec[s.name]; ok && prev.Set == s.value && old == s.value {
			// A crashed run set it; its record has the operator's value.
			delete(rec, s.name)
			i.sysctls = append(i.sysctls, sysctlChange{name: s.name, old: prev.Old, set: s.value})
			continue
		}
		delete(rec, s.name)
		if old == s.value {
			continue
		}
		if err := r.WriteSysctl(s.name, s.value); err != nil {
			return nil, i.undo(ctx, fmt.Errorf("firewall: set sysctl %s=%s: %w", s.name, s.value, err))
		}
		i.sysctls = append(i.sysctls, sysctlChange{name: s.name, old: old, set: s.value})
	}
	// What a crashed run changed and this run does not need goes back now.
	for _, prev := range rec {
		_ = restoreSysctl(r, sysctlChange{name: prev.Name, old: prev.Old, set: prev.Set})
	}
	if recPath != "" {
		// Best effort: without a record (say /run is read-only) a crash
		// only loses the originals, as it would with no record at all.
		i.record = recPath
		if len(i.sysctls) == 0 {
			_ = removeRecord(recPath)
		} else {
			_ = writeRecord(recPath, i.sysctls)
		}
	}
	return i, nil
}

// undo removes what a failed Install did and returns cause, joined with
// any error of the clean-up.
func (i *Installed) undo(ctx context.Context, cause error) error {
	if err := i.Remove(context.WithoutCancel(ctx)); err != nil {
		return errors.Join(cause, fmt.Errorf("firewall: undo failed install: %w", err))
	}
	return cause
}

// Remove deletes every SYNGUARD chain and every jump to one, in both
// families, whether Install, Restore or Replace put it there, then puts
// back the sysctls Install and Replace changed. A sysctl that
// someone changed again since Install is left as it is. Remove may be
// called more than once: it retries only what failed before, and once
// everything is undone it does nothing. A nil *Installed is fine too.
//
// ctx bounds the commands Remove runs: when shutting down because a
// context was cancelled, pass a fresh one.
func (i *Installed) Remove(ctx context.Context) error {
	if i == nil {
		return nil
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.removed = true
	var errs []error
	if !i.rulesGone {
		if err := removeLeftovers(ctx, i.runner); err != nil {
			errs = append(errs, fmt.Errorf("firewall: remove rules: %w", err))
		} else {
			i.rulesGone = true
		}
	}
	for k := range i.sysctls {
		s := &i.sysctls[k]
		if s.restored {
			continue
		}
		if err := restoreSysctl(i.runner, *s); err != nil {
			errs = append(errs, fmt.Errorf("firewall: restore sysctl %s=%s: %w", s.name, s.old, err))
			continue
		}
		s.restored = true
	}
	if len(errs) == 0 && i.record != "" {
		// Everything is back: the record has served.
		if err := removeRecord(i.record); err != nil {
			errs = append(errs, fmt.Errorf("firewall: remove sysctl record: %w", err))
		} else {
			i.record = ""
		}
	}
	return errors.Join(errs...)
}

func restoreSysctl(r Runner, s sysctlChange) error {
	now, err := r.ReadSysctl(s.name)
	if err != nil {
		return err
	}
	if now != s.set {
		return nil // changed by someone else since: theirs wins
	}
	return r.WriteSysctl(s.name, s.old)
}

// sysctl is a kernel setting Install needs.
type sysctl struct {
	name, value string
	module      string // the kernel module that registers it, if any
}

// sysctlsFor returns the sysctls c needs, in the order Install sets them.
func sysctlsFor(c Config) []sysctl {
	out := []sysctl{{"net.netfilter.nf_conntrack_tcp_loose", "0", "nf_conntrack"}}
	if c.Local {
		return out
	}
	v4, v6 := false, false
	for _, s := range c.Services {
		v4 = v4 || s.Addr().Is4()
		v6 = v6 || s.Addr().Is6()
	}
	if v4 {
		out = append(out, sysctl{"net.ipv4.ip_forward", "1", ""})
	}
	if v6 {
		out = append(out, sysctl{"net.ipv6.conf.all.forwarding", "1", "ipv6"})
	}
	return out
}

// RemoveLeftovers deletes, in the calling process's network namespace, in
// both families and every table, each chain named SYNGUARD or SYNGUARD-*
// and each rule elsewhere that jumps to one. Install calls it first, so a
// crashed run's chains never make Install fail or duplicate rules;
// operators call it to clean up by hand. It does not touch sysctls.
func RemoveLeftovers(ctx context.Context) error {
	return removeLeftovers(ctx, Host{})
}

func removeLeftovers(ctx context.Context, r Runner) error {
	var errs []error
	for _, f := range families {
		saved, err := run(ctx, r, nil, f.save)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s rules: %w", f.name, err))
			continue
		}
		script, err := cleanupScript(saved)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s rules: %w", f.name, err))
			continue
		}
		if script == "" {
			continue
		}
		if _, err := run(ctx, r, []byte(script), f.restore, "--noflush", "--wait"); err != nil {
			errs = append(errs, fmt.Errorf("remove %s chains: %w", f.name, err))
		}
	}
	return errors.Join(errs...)
}

// OwnsChain reports whether synguard owns the chain called name.
func OwnsChain(name string) bool {
	return name == chainPrefix || strings.HasPrefix(name, chainPrefix+"-")
}

// cleanupScript reads iptables-save output and returns iptables-restore
// input that deletes every owned chain and every rule of another chain
// that jumps or goes to one; "" when there is nothing to delete. Per
// table it deletes the jumps first, then empties the owned chains (they
// may refer to each other), then deletes them.
func cleanupScript(saved []byte) (string, error) {
	var b strings.Builder
	var table string
	var jumps, chains []string
	sc := bufio.NewScanner(bytes.NewReader(saved))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table, jumps, chains = line[1:], nil, nil
		case strings.HasPrefix(line, ":"):
			if name, _, _ := strings.Cut(line[1:], " "); OwnsChain(name) {
				chains = append(chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[len("-A "):], " ")
			if !OwnsChain(chain) && targetsOwned(spec) {
				jumps = append(jumps, "-D "+chain+" "+spec)
			}
		case line == "COMMIT":
			if len(jumps) == 0 && len(chains) == 0 {
				continue
			}
			b.WriteString("*" + table + "\n")
			for _, j := range jumps {
				b.WriteString(j + "\n")
			}
			for _, c := range chains {
				b.WriteString("-F " + c + "\n")
			}
			for _, c := range chains {
				b.WriteString("-X " + c + "\n")
			}
			b.WriteString("COMMIT\n")
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return b.String(), nil
}

// targetsOwned reports whether a rule spec jumps (-j) or goes (-g) to an
// owned chain.
func targetsOwned(spec string) bool {
	f := strings.Fields(spec)
	for k := 0; k+1 < len(f); k++ {
		if (f[k] == "-j" || f[k] == "-g") && OwnsChain(f[k+1]) {
			return true
		}
	}
	return false
}
