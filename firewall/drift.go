package firewall

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrRemoved is what Check, Restore and Replace return once Remove has
// been called: nothing is meant to be in place any more.
var ErrRemoved = errors.New("firewall: rules already removed")

// Check compares the live ruleset with what Rules renders for the Config
// in force (Install's, or the last Replace's) and lists, for people, each
// of synguard's chains, jumps and rules that is missing or differs, such
// as "IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING" or "IPv4 filter
// SYNGUARD-FORWARD rule 3". None means the rules are intact.
//
// Only synguard's own chains and the jumps to them are compared: rules of
// other tools, wherever they are, are none of its business. A jump counts
// as present anywhere in its built-in chain, not only first: see Restore.
func (i *Installed) Check(ctx context.Context) ([]string, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.removed {
		return nil, ErrRemoved
	}
	var missing []string
	for _, f := range families {
		want := tablesFor(i.cfg, f)
		if len(want) == 0 {
			continue
		}
		live, err := readLive(ctx, i.runner, f, tableNames(want))
		if err != nil {
			return nil, fmt.Errorf("firewall: check %s rules: %w", f.name, err)
		}
		for _, t := range want {
			missing = append(missing, t.drift(f, live[t.name])...)
		}
	}
	return missing, nil
}

// Restore puts back what Check finds missing. Per family it runs one
// `iptables-restore --noflush` in which each table that drifted has all of
// synguard's chains declared, which creates them or flushes them, and
// refilled: the kernel commits each table at once, so a chain is never
// seen half-filled. A jump is inserted, at position 1, only where none is
// left, so jumps are never duplicated.
//
// A jump still present but no longer first stays where it is: whatever
// now comes before it was put there after synguard, by the operator or a
// tool that also wants to be first, and moving back in front on every
// check would fight that tool without end.
//
// Restore then reads the rules again and returns an error naming what
// still differs, so a rule the save tool prints differently from how
// synguard wrote it is reported rather than restored forever unnoticed.
func (i *Installed) Restore(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.removed {
		return ErrRemoved
	}
	var errs []error
	for _, f := range families {
		if err := i.restore(ctx, f); err != nil {
			errs = append(errs, fmt.Errorf("firewall: restore %s rules: %w", f.name, err))
		}
	}
	return errors.Join(errs...)
}

func (i *Installed) restore(ctx context.Context, f family) error {
	want := tablesFor(i.cfg, f)
	if len(want) == 0 {
		return nil
	}
	names := tableNames(want)
	live, err := readLive(ctx, i.runner, f, names)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, t := range want {
		if len(t.drift(f, live[t.name])) > 0 {
			writeScript(&b, t.name, t, live[t.name], false)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if _, err := run(ctx, i.runner, []byte(b.String()), f.restore, "--noflush", "--wait"); err != nil {
		return err
	}
	if live, err = readLive(ctx, i.runner, f, names); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	var still []string
	for _, t := range want {
		still = append(still, t.drift(f, live[t.name])...)
	}
	if len(still) > 0 {
		return fmt.Errorf("%s still shows these differently after the restore: %s", f.save, strings.Join(still, ", "))
	}
	return nil
}

// Replace puts the rules of c in place of those in force, for a reload.
// Per family it runs one `iptables-restore --noflush`: c's chains are
// declared and refilled, jumps a new chain needs are inserted, and
// chains c no longer needs (a family's last service removed,
// ObserveFirstACK turned off, Local switched) are deleted with their
// jumps. Each table is one kernel commit, so a service in both
// configurations is protected at every moment; tables and families whose
// rules are already c's are left alone.
//
// If a step fails, Replace puts the previous rules back and its error says
// whether they are in force again. Check and Restore then keep to the
// previous Config.
//
// Then the sysctls c needs are set as Install sets them, and put back by
// Remove. Those c no longer needs keep their value until Remove: turning
// forwarding off and on while running would disturb more than it saves.
// Replace acts through the Runner Install was given; c.Runner is ignored.
func (i *Installed) Replace(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c = c.clone()
	c.Runner = i.runner
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.removed {
		return ErrRemoved
	}
	old := i.cfg
	var touched []family
	for _, f := range families {
		if len(tablesFor(c, f)) == 0 && len(tablesFor(old, f)) == 0 {
			continue
		}
		touched = append(touched, f)
		if err := i.converge(ctx, f, c, old); err != nil {
			return i.rollback(ctx, touched, old, c, fmt.Errorf("firewall: replace %s rules: %w", f.name, err))
		}
	}
	if err := i.setSysctls(c); err != nil {
		return i.rollback(ctx, touched, old, c, err)
	}
	i.cfg = c
	return nil
}

// rollback converges the families Replace touched back to old after
// cause, and says in the error whether that worked.
func (i *Installed) rollback(ctx context.Context, touched []family, old, failed Config, cause error) error {
	ctx = context.WithoutCancel(ctx)
	for _, f := range touched {
		if err := i.converge(ctx, f, old, failed); err != nil {
			return fmt.Errorf("%w; putting the previous %s rules back failed too, synguard's rules may be incomplete until the next restore: %w", cause, f.name, err)
		}
	}
	return fmt.Errorf("%w; the previous rules are in force", cause)
}

// converge makes family f's rules those of want, reading the tables that
// want or other use; synguard's chains in them that want lacks are
// deleted.
func (i *Installed) converge(ctx context.Context, f family, want, other Config) error {
	wantTables := tablesFor(want, f)
	names := tableNames(wantTables)
	for _, n := range tableNames(tablesFor(other, f)) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	live, err := readLive(ctx, i.runner, f, names)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, n := range names {
		var t *table
		if k := slices.IndexFunc(wantTables, func(t *table) bool { return t.name == n }); k >= 0 {
			t = wantTables[k]
		}
		writeScript(&b, n, t, live[n], true)
	}
	if b.Len() == 0 {
		return nil
	}
	_, err = run(ctx, i.runner, []byte(b.String()), f.restore, "--noflush", "--wait")
	return err
}

// setSysctls sets the sysctls c needs that do not have their value,
// remembering the operator's value for Remove.
func (i *Installed) setSysctls(c Config) error {
	changed := false
	for _, s := range sysctlsFor(c) {
		now, err := i.runner.ReadSysctl(s.name)
		if err != nil {
			return fmt.Errorf("firewall: read sysctl %s: %w", s.name, err)
		}
		if now == s.value {
			continue
		}
		if err := i.runner.WriteSysctl(s.name, s.value); err != nil {
			return fmt.Errorf("firewall: set sysctl %s=%s: %w", s.name, s.value, err)
		}
		changed = true
		k := slices.IndexFunc(i.sysctls, func(x sysctlChange) bool { return x.name == s.name })
		if k < 0 {
			i.sysctls = append(i.sysctls, sysctlChange{name: s.name, old: now, set: s.value})
			continue
		}
		// Changed by someone since Install: the value before synguard
		// is still the one to put back.
		i.sysctls[k].set, i.sysctls[k].restored = s.value, false
	}
	if changed && i.record != "" {
		_ = writeRecord(i.record, i.sysctls) // best effort, as in Install
	}
	return nil
}

// writeScript writes the iptables-restore lines that make the table name,
// as live has it, hold want's chains and rules (want may be nil). Each of
// want's chains is declared, which creates or flushes it, and refilled; a
// jump to it is inserted only where live has none. With drop, synguard's
// chains that want does not have are deleted, and every rule of another
// chain that jumps or goes to one. Nothing is written when live already
// is what it should be.
func writeScript(b *strings.Builder, name string, want *table, live *liveTable, drop bool) {
	var unwanted []string
	if drop && live != nil {
		for c := range live.chains {
			if OwnsChain(c) && (want == nil || !slices.Contains(want.chains, c)) {
				unwanted = append(unwanted, c)
			}
		}
		slices.Sort(unwanted)
	}
	if len(unwanted) == 0 && (want == nil || len(want.drift(family{}, live)) == 0) {
		return
	}
	b.WriteString("*" + name + "\n")
	if want != nil {
		for _, l := range want.declarations() {
			b.WriteString(l + "\n")
		}
		for _, j := range want.jumps {
			if !slices.Contains(live.chainRules(j.from), j.saved()) {
				b.WriteString(j.insert() + "\n")
			}
		}
	}
	if len(unwanted) > 0 {
		chains := make([]string, 0, len(live.rules))
		for c := range live.rules {
			if !OwnsChain(c) {
				chains = append(chains, c)
			}
		}
		slices.Sort(chains)
		for _, c := range chains {
			for _, r := range live.rules[c] {
				if targetsAny(r, unwanted) {
					b.WriteString("-D" + strings.TrimPrefix(r, "-A") + "\n")
				}
			}
		}
		for _, c := range unwanted {
			b.WriteString("-F " + c + "\n")
		}
		for _, c := range unwanted {
			b.WriteString("-X " + c + "\n")
		}
	}
	if want != nil {
		for _, l := range want.rules {
			b.WriteString(l + "\n")
		}
	}
	b.WriteString("COMMIT\n")
}

// targetsAny reports whether a saved rule jumps (-j) or goes (-g) to one
// of chains.
func targetsAny(rule string, chains []string) bool {
	f := strings.Fields(rule)
	for k := 0; k+1 < len(f); k++ {
		if (f[k] == "-j" || f[k] == "-g") && slices.Contains(chains, f[k+1]) {
			return true
		}
	}
	return false
}

// drift lists what of t is missing from live (nil: the table is not
// there) or differs there, each named for people and prefixed with the
// family and table.
func (t *table) drift(f family, live *liveTable) []string {
	where := t.name + " "
	if f.name != "" {
		where = f.name + " " + where
	}
	var out []string
	for _, j := range t.jumps {
		if !slices.Contains(live.chainRules(j.from), j.saved()) {
			out = append(out, where+j.from+" jump to "+j.to)
		}
	}
	for _, c := range t.chains {
		if !live.hasChain(c) {
			out = append(out, where+"chain "+c)
			continue
		}
		out = append(out, ruleDiffs(where+c, t.chainRules(c), live.chainRules(c))...)
	}
	return out
}

// chainRules returns the rules t appends to chain.
func (t *table) chainRules(chain string) []string {
	var out []string
	for _, r := range t.rules {
		if strings.HasPrefix(r, "-A "+chain+" ") {
			out = append(out, r)
		}
	}
	return out
}

// ruleDiffs compares a chain's rules position by position and names the
// runs of positions that differ ("rule 3", "rules 1-4") and the rules
// beyond synguard's.
func ruleDiffs(chain string, want, got []string) []string {
	var out []string
	span := func(from, to int) {
		if from == to {
			out = append(out, fmt.Sprintf("%s rule %d", chain, from))
		} else {
			out = append(out, fmt.Sprintf("%s rules %d-%d", chain, from, to))
		}
	}
	start := 0 // first differing position of the current run, 1-based
	for k := range want {
		differs := k >= len(got) || got[k] != want[k]
		switch {
		case differs && start == 0:
			start = k + 1
		case !differs && start != 0:
			span(start, k)
			start = 0
		}
	}
	if start != 0 {
		span(start, len(want))
	}
	switch extra := len(got) - len(want); {
	case extra == 1:
		out = append(out, chain+": 1 rule too many")
	case extra > 1:
		out = append(out, fmt.Sprintf("%s: %d rules too many", chain, extra))
	}
	return out
}

// tableNames returns the names of tables, in order.
func tableNames(tables []*table) []string {
	out := make([]string, len(tables))
	for k, t := range tables {
		out[k] = t.name
	}
	return out
}

// liveTable is one table of the live ruleset, as the save tool prints it.
type liveTable struct {
	chains map[string]bool     // every chain in it, built-in or not
	rules  map[string][]string // each chain's rules, "-A CHAIN ...", in order
}

func (l *liveTable) hasChain(name string) bool { return l != nil && l.chains[name] }

func (l *liveTable) chainRules(chain string) []string {
	if l == nil {
		return nil
	}
	return l.rules[chain]
}

// readLive reads the named tables of family f, one save command each, so
// that tables synguard does not use (a large nat table, say) are never
// read. A table the tool does not print is nil in the result.
func readLive(ctx context.Context, r Runner, f family, tables []string) (map[string]*liveTable, error) {
	out := make(map[string]*liveTable, len(tables))
	for _, name := range tables {
		saved, err := run(ctx, r, nil, f.save, "-t", name)
		if err != nil {
			return nil, err
		}
		parsed, err := parseSaved(saved)
		if err != nil {
			return nil, fmt.Errorf("read %s output: %w", f.save, err)
		}
		out[name] = parsed[name]
	}
	return out, nil
}

// parseSaved reads the save tool's output, of one table or several.
func parseSaved(saved []byte) (map[string]*liveTable, error) {
	out := make(map[string]*liveTable)
	var cur *liveTable
	sc := bufio.NewScanner(bytes.NewReader(saved))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &liveTable{chains: make(map[string]bool), rules: make(map[string][]string)}
			out[line[1:]] = cur
		case cur == nil:
			// Comments outside a table.
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			cur.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[len("-A "):], " ")
			cur.rules[chain] = append(cur.rules[chain], line)
		case line == "COMMIT":
			cur = nil
		}
	}
	return out, sc.Err()
}
