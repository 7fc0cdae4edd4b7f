package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/lexer"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"

	"github.com/synguard/synguard/engine"
)

// MaxFileSize bounds a configuration file: a few hundred services with
// their lists fit many times over.
const MaxFileSize = 1 << 20

// file is a decoded configuration file: every value has the type its key
// wants, and every service address and prefix parses; what depends on
// other keys or on flags is checked when it is resolved.
type file struct {
	name string
	root origin
	// top holds the defaults and the top-level keys the file sets, set
	// their origins.
	top Settings
	set origins
	// protect and services are the services in the order listed.
	protect, services []entry
}

// entry is a service: from protect (the top-level list or the flag),
// with default settings, or from services, with its own.
type entry struct {
	addr netip.AddrPort
	at   origin // of the address
	// own holds the settings the entry sets, set their origins.
	own         Settings
	set         origins
	allow, deny []netip.Prefix
}

// decoder walks a parsed file, turning its nodes into settings. Every
// error it returns is an *Error located in the file.
type decoder struct {
	name string
}

// parse decodes the configuration file name, whose contents are data.
func parse(name string, data []byte) (*file, error) {
	d := &decoder{name: name}
	if len(data) > MaxFileSize {
		return nil, d.errorAt(origin{line: 1, col: 1}, "file is %d bytes: at most %d", len(data), MaxFileSize)
	}
	tokens := lexer.Tokenize(string(data))
	if err := d.shape(tokens); err != nil {
		return nil, err
	}
	// Keys given twice are found below, where the key's path is known.
	tree, err := parser.Parse(tokens, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		return nil, d.syntaxError(err, data)
	}
	var docs []*ast.DocumentNode
	for _, doc := range tree.Docs {
		if doc != nil && doc.Body != nil && !isComment(doc.Body) {
			docs = append(docs, doc)
		}
	}
	switch {
	case len(docs) == 0:
		return nil, d.errorAt(origin{line: 1, col: 1}, "the file is empty; it needs at least the services to protect")
	case len(docs) > 1:
		return nil, d.errorAt(d.at(docs[1].Body, ""), "a second YAML document: the configuration is one document")
	}
	return d.file(docs[0].Body)
}

// Bounds on the file's shape, far above what a configuration needs (four
// levels: services, a service, its allow list; a few thousand keys for
// the most services). The YAML parser's time grows with the square of
// the nesting depth and of a mapping's keys, and its stack with the depth.
const (
	maxDepth = 16
	maxKeys  = 4096
)

// shape refuses a file nested deeper than maxDepth or with more than
// maxKeys keys, from its tokens, before it is parsed.
func (d *decoder) shape(tokens token.Tokens) error {
	// Block collections nest by column; a level is a column and whether
	// it holds a sequence's entries or a mapping's keys.
	type level struct {
		col int
		seq bool
	}
	var block []level
	flow, keys := 0, 0
	var prev *token.Token
	for _, tk := range tokens {
		if tk.Position == nil {
			continue
		}
		at := origin{line: max(tk.Position.Line, 1), col: max(tk.Position.Column, 1)}
		switch tk.Type {
		case token.CommentType:
			continue
		case token.SequenceStartType, token.MappingStartType:
			flow++
		case token.SequenceEndType, token.MappingEndType:
			flow = max(flow-1, 0)
		case token.MappingValueType, token.SequenceEntryType:
			if tk.Type == token.MappingValueType {
				if keys++; keys > maxKeys {
					return d.errorAt(at, "more than %d keys: a configuration needs far fewer", maxKeys)
				}
			}
			if flow > 0 {
				break
			}
			l := level{col: tk.Position.Column, seq: tk.Type == token.SequenceEntryType}
			if !l.seq && prev != nil && prev.Position != nil {
				l.col = prev.Position.Column // the key's
			}
			for len(block) > 0 && block[len(block)-1].col > l.col {
				block = block[:len(block)-1]
			}
			if n := len(block); n > 0 && block[n-1].col == l.col {
				block[n-1] = l
			} else {
				block = append(block, l)
			}
		}
		if len(block)+flow > maxDepth {
			return d.errorAt(at, "nested more than %d levels deep: a configuration needs 4", maxDepth)
		}
		prev = tk
	}
	return nil
}

func isComment(n ast.Node) bool {
	switch n.(type) {
	case *ast.CommentNode, *ast.CommentGroupNode:
		return true
	}
	return false
}

// syntaxError locates a YAML parser error.
func (d *decoder) syntaxError(err error, data []byte) *Error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		at := origin{line: 1, col: 1}
		if tk := ye.GetToken(); tk != nil && tk.Position != nil && tk.Position.Line > 0 {
			at.line, at.col = tk.Position.Line, max(tk.Position.Column, 1)
		}
		msg := ye.GetMessage()
		if line := sourceLine(data, at.line); strings.Contains(line, "[") && strings.Contains(line, "]:") {
			msg += `; quote IPv6 services: "[2001:db8::1]:443"`
		}
		return d.errorAt(at, "YAML: %s", msg)
	}
	return d.errorAt(origin{line: 1, col: 1}, "YAML: %v", err)
}

// sourceLine returns line n (from 1) of data.
func sourceLine(data []byte, n int) string {
	for i := 1; len(data) > 0; i++ {
		line, rest, _ := bytes.Cut(data, []byte("\n"))
		if i == n {
			return string(line)
		}
		data = rest
	}
	return ""
}

// errorAt returns the error of the key at o.
func (d *decoder) errorAt(o origin, format string, args ...any) *Error {
	return &Error{File: d.name, Line: o.line, Column: o.col, Key: o.path, Err: fmt.Errorf(format, args...)}
}

// at is the origin of node n, whose path is path.
func (d *decoder) at(n ast.Node, path string) origin {
	o := origin{path: path, line: 1, col: 1}
	if m, ok := n.(*ast.MappingNode); ok && !m.IsFlowStyle && len(m.Values) > 0 {
		// A block mapping's token is its first colon; its first key is
		// where it starts.
		n = m.Values[0].Key
	}
	if n == nil {
		return o
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil && tk.Position.Line > 0 {
		o.line, o.col = tk.Position.Line, max(tk.Position.Column, 1)
	}
	return o
}

// field is one key and its value in a mapping.
type field struct {
	name  string
	at    origin // of the key
	value ast.Node
}

// fields returns the keys of mapping n, whose path is path, in order. A
// key given twice is an error; so is anything but a mapping.
func (d *decoder) fields(n ast.Node, path, what string) ([]field, error) {
	var pairs []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		pairs = m.Values
	case *ast.MappingValueNode:
		pairs = []*ast.MappingValueNode{m}
	default:
		if err := d.plain(n, path); err != nil {
			return nil, err
		}
		return nil, d.errorAt(d.at(n, path), "want %s, got %s", what, describe(n))
	}
	out := make([]field, 0, len(pairs))
	first := make(map[string]origin, len(pairs))
	for _, p := range pairs {
		var name string
		switch k := p.Key.(type) {
		case *ast.StringNode:
			name = k.Value
		case *ast.MergeKeyNode:
			return nil, d.errorAt(d.at(k, path), "merge keys (<<) are not supported: write the settings out (a service takes what it leaves out from the top level)")
		default:
			name = p.Key.String()
		}
		at := d.at(p.Key, join(path, name))
		if o, dup := first[name]; dup {
			return nil, d.errorAt(at, "given twice (first at line %d, column %d)", o.line, o.col)
		}
		first[name] = at
		if err := d.plain(p.Value, at.path); err != nil {
			return nil, err
		}
		out = append(out, field{name: name, at: at, value: p.Value})
	}
	return out, nil
}

// plain refuses the YAML features the configuration has no use for:
// anchors, aliases and tags would make a value's position and its key's
// differ, and errors point at keys.
func (d *decoder) plain(n ast.Node, path string) error {
	switch n.(type) {
	case *ast.AnchorNode, *ast.AliasNode:
		return d.errorAt(d.at(n, path), "anchors and aliases are not supported: write the value out")
	case *ast.TagNode:
		return d.errorAt(d.at(n, path), "tags are not supported: write the value plainly")
	}
	return nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// file decodes the top-level mapping.
func (d *decoder) file(root ast.Node) (*file, error) {
	f := &file{name: d.name, root: d.at(root, ""), top: Defaults(), set: origins{}}
	fields, err := d.fields(root, "", "a mapping of settings (protect: [ADDR:PORT], services: ...)")
	if err != nil {
		return nil, err
	}
	for _, fl := range fields {
		switch k, ok := lookup(fl.name); {
		case fl.name == keyServices:
			if f.services, err = d.services(fl); err != nil {
				return nil, err
			}
		case fl.name == keyProtect:
			addrs, ats, err := d.addrs(fl)
			if err != nil {
				return nil, err
			}
			for i, a := range addrs {
				f.protect = append(f.protect, entry{addr: a, at: ats[i]})
			}
			f.set[keyProtect] = fl.at
		case ok:
			if err := d.value(k, fl, &f.top); err != nil {
				return nil, err
			}
			if k.name == "key_file" && f.top.KeyFile != "" && !filepath.IsAbs(f.top.KeyFile) {
				// Relative to the file, not to wherever synguard starts.
				f.top.KeyFile = filepath.Join(filepath.Dir(d.name), f.top.KeyFile)
			}
			f.set[k.name] = fl.at
		case fl.name == keyAllow || fl.name == keyDeny:
			return nil, d.errorAt(fl.at, "%s lists are per service: set it on an entry of services", fl.name)
		default:
			return nil, d.unknown(fl, Keys())
		}
	}
	return f, nil
}

// unknown is the error of an unknown key.
func (d *decoder) unknown(fl field, known []string) *Error {
	if s := suggest(fl.name, known); s != "" {
		return d.errorAt(fl.at, "unknown key; did you mean %s?", s)
	}
	return d.errorAt(fl.at, "unknown key (want one of %s)", strings.Join(known, ", "))
}

// services decodes the services list.
func (d *decoder) services(fl field) ([]entry, error) {
	seq, err := d.list(fl, "a list of services, each a mapping with protect: ADDR:PORT")
	if err != nil {
		return nil, err
	}
	out := make([]entry, 0, len(seq.Values))
	for i, n := range seq.Values {
		path := fmt.Sprintf("%s[%d]", keyServices, i)
		if err := d.plain(n, path); err != nil {
			return nil, err
		}
		e, err := d.service(n, path)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// service decodes one entry of services, at path.
func (d *decoder) service(n ast.Node, path string) (entry, error) {
	e := entry{set: origins{}}
	fields, err := d.fields(n, path, "a mapping with protect: ADDR:PORT and the service's settings")
	if err != nil {
		return entry{}, err
	}
	var allow, deny []origin
	for _, fl := range fields {
		switch k, ok := lookup(fl.name); {
		case fl.name == keyProtect:
			s, err := d.str(fl.value, fl.at, "ADDR:PORT (\"[ADDR]:PORT\", quoted, for IPv6)")
			if err != nil {
				return entry{}, err
			}
			if e.addr, err = ParseService(s); err != nil {
				return entry{}, d.errorAt(fl.at, "%v", err)
			}
			e.at = fl.at
		case fl.name == keyAllow:
			if e.allow, allow, err = d.prefixes(fl); err != nil {
				return entry{}, err
			}
		case fl.name == keyDeny:
			if e.deny, deny, err = d.prefixes(fl); err != nil {
				return entry{}, err
			}
		case ok && k.service:
			if err := d.value(k, fl, &e.own); err != nil {
				return entry{}, err
			}
			fl.at.service = true
			e.set[k.name] = fl.at
		case ok:
			return entry{}, d.errorAt(fl.at, "%s is not a per-service setting: set it at the top level", fl.name)
		default:
			return entry{}, d.unknown(fl, ServiceKeys())
		}
	}
	if !e.addr.IsValid() {
		return entry{}, d.errorAt(d.at(n, path), "no protect: every service needs its protect: ADDR:PORT")
	}
	// The lists' family is the service's, which may be given after them.
	for _, l := range []struct {
		ps  []netip.Prefix
		ats []origin
	}{{e.allow, allow}, {e.deny, deny}} {
		for i, p := range l.ps {
			if p.Addr().Is4() != e.addr.Addr().Is4() {
				return entry{}, d.errorAt(l.ats[i], "%s is of the other address family than the service %s", p, e.addr)
			}
		}
	}
	return e, nil
}

// list returns fl's value as a sequence.
func (d *decoder) list(fl field, what string) (*ast.SequenceNode, error) {
	seq, ok := fl.value.(*ast.SequenceNode)
	if !ok {
		return nil, d.errorAt(fl.at, "want %s, got %s", what, describe(fl.value))
	}
	return seq, nil
}

// stringList returns the elements of list fl, strings each, with their
// origins.
func (d *decoder) stringList(fl field, list, what string) ([]string, []origin, error) {
	seq, err := d.list(fl, list)
	if err != nil {
		return nil, nil, err
	}
	out := make([]string, len(seq.Values))
	ats := make([]origin, len(seq.Values))
	for i, n := range seq.Values {
		ats[i] = d.at(n, fmt.Sprintf("%s[%d]", fl.at.path, i))
		if err := d.plain(n, ats[i].path); err != nil {
			return nil, nil, err
		}
		if out[i], err = d.str(n, ats[i], what); err != nil {
			return nil, nil, err
		}
	}
	return out, ats, nil
}

// addrs decodes a list of services.
func (d *decoder) addrs(fl field) ([]netip.AddrPort, []origin, error) {
	ss, ats, err := d.stringList(fl, want[kindServices], `ADDR:PORT ("[ADDR]:PORT", quoted, for IPv6)`)
	if err != nil {
		return nil, nil, err
	}
	out := make([]netip.AddrPort, len(ss))
	for i, s := range ss {
		if out[i], err = ParseService(s); err != nil {
			return nil, nil, d.errorAt(ats[i], "%v", err)
		}
	}
	return out, ats, nil
}

// prefixes decodes an allow or deny list.
func (d *decoder) prefixes(fl field) ([]netip.Prefix, []origin, error) {
	ss, ats, err := d.stringList(fl, want[kindPrefixes], `a CIDR ("203.0.113.0/24") or an address`)
	if err != nil {
		return nil, nil, err
	}
	if len(ss) > engine.MaxSourcePrefixes {
		return nil, nil, d.errorAt(fl.at, "%d prefixes: at most %d", len(ss), engine.MaxSourcePrefixes)
	}
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		if out[i], err = ParsePrefix(s); err != nil {
			return nil, nil, d.errorAt(ats[i], "%v", err)
		}
	}
	return out, ats, nil
}

// value decodes fl, a key of kind k, into s.
func (d *decoder) value(k key, fl field, s *Settings) error {
	n, at := fl.value, fl.at
	bad := func() error { return d.errorAt(at, "want %s, got %s", want[k.kind], describe(n)) }
	switch dst := k.field(s).(type) {
	case *string:
		switch k.kind {
		case kindWScale:
			switch v := n.(type) {
			case *ast.IntegerNode:
				*dst = v.GetToken().Value
			case *ast.StringNode:
				*dst = v.Value
			default:
				return bad()
			}
		case kindSACK:
			switch v := n.(type) {
			case *ast.BoolNode:
				*dst = map[bool]string{true: "on", false: "off"}[v.Value]
			case *ast.StringNode:
				*dst = v.Value
			default:
				return bad()
			}
		default:
			v, err := d.str(n, at, want[k.kind])
			if err != nil {
				return err
			}
			*dst = v
		}
	case *uint:
		v, ok := integer(n)
		if !ok || v < 0 {
			return bad()
		}
		*dst = uint(v)
	case *int:
		v, ok := integer(n)
		if !ok {
			return bad()
		}
		*dst = int(v)
	case *float64:
		switch v := n.(type) {
		case *ast.FloatNode:
			*dst = v.Value
		case *ast.IntegerNode:
			i, ok := integer(v)
			if !ok {
				return bad()
			}
			*dst = float64(i)
		default:
			return bad()
		}
	case *bool:
		v, ok := n.(*ast.BoolNode)
		if !ok {
			return bad()
		}
		*dst = v.Value
	case *time.Duration:
		switch v := n.(type) {
		case *ast.StringNode:
			t, err := time.ParseDuration(v.Value)
			if err != nil {
				return bad()
			}
			*dst = t
		case *ast.IntegerNode:
			// 0 needs no unit; any other number does.
			if i, ok := integer(v); !ok || i != 0 {
				return bad()
			}
			*dst = 0
		default:
			return bad()
		}
	case *[]string:
		names, ats, err := d.stringList(fl, want[kindNames], "a name")
		if err != nil {
			return err
		}
		for i, name := range names {
			if name == "" || strings.ContainsAny(name, ", \t") {
				return d.errorAt(ats[i], "%q is not an interface name", name)
			}
		}
		*dst = names
	default:
		panic(fmt.Sprintf("config: key %s has no decoder", k.name))
	}
	return nil
}

// str returns n as a string.
func (d *decoder) str(n ast.Node, at origin, what string) (string, error) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, nil
	case *ast.LiteralNode:
		if v.Value != nil {
			return v.Value.Value, nil
		}
	}
	return "", d.errorAt(at, "want %s, got %s", what, describe(n))
}

// integer returns n as an integer, if it is one that fits an int.
func integer(n ast.Node) (int64, bool) {
	v, ok := n.(*ast.IntegerNode)
	if !ok {
		return 0, false
	}
	switch i := v.Value.(type) {
	case int64:
		return i, i >= math.MinInt && i <= math.MaxInt
	case uint64:
		return int64(i), i <= math.MaxInt
	}
	return 0, false
}

// describe says what n is, for type errors.
func describe(n ast.Node) string {
	switch v := n.(type) {
	case nil, *ast.NullNode:
		return "nothing"
	case *ast.StringNode:
		s := v.Value
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return strconv.Quote(s)
	case *ast.LiteralNode:
		return "a block of text"
	case *ast.SequenceNode:
		return "a list"
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		if tk := n.GetToken(); tk != nil {
			return tk.Value
		}
	}
	return strings.ToLower(n.Type().String())
}

// ParseService parses a protected service's address: ADDR:PORT, or
// [ADDR]:PORT for IPv6. An IPv4-mapped IPv6 address is taken as the IPv4
// one.
func ParseService(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("%q is not ADDR:PORT ([ADDR]:PORT for IPv6)", s)
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%q: port 0", s)
	case ap.Addr().IsUnspecified():
		return netip.AddrPort{}, fmt.Errorf("%q: give the service's own address, not a wildcard", s)
	case ap.Addr().Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	a := ap.Addr().Unmap()
	if a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.AddrPort{}, fmt.Errorf("%q: TCP needs a unicast address", s)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// ParsePrefix parses an allow or deny list's entry: a CIDR, or an
// address for itself alone (/32, /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an address", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an address", s)
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped prefix shorter than /96", s)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}
