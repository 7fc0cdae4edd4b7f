package config

import (
	"fmt"
	"strings"
)

// Error is a mistake in the configuration, and where it is: in the file
// (File, Line, Column, and Key as the key's path there,
// "services[1].mode"), or on the command line (Key is the flag, "--mode").
type Error struct {
	File         string
	Line, Column int
	Key          string
	Err          error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Column)
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// origin is where a setting's value came from: the file (line, column
// and path of its key), a flag, or neither (the default).
type origin struct {
	flag      string // "--mode"
	path      string // "services[1].mode"
	line, col int
	service   bool // set by the service's own key
}

// rank orders origins by how specific they are: a service's own key over
// a flag over the file's top level over the default.
func (o origin) rank() int {
	switch {
	case o.service:
		return 3
	case o.flag != "":
		return 2
	case o.path != "":
		return 1
	}
	return 0
}

// origins are the origins of a set of settings' keys; a key without one
// has its default.
type origins map[string]origin

// blame returns the most specific origin among those of names, the first
// of them on a tie.
func (os origins) blame(names ...string) (string, origin) {
	best, at := names[0], os[names[0]]
	for _, n := range names[1:] {
		if o := os[n]; o.rank() > at.rank() {
			best, at = n, o
		}
	}
	return best, at
}

// errorf returns the error of a setting from o, in file: located at its
// key, or naming its flag; a default is named by its key, name.
func (o origin) errorf(file, name, format string, args ...any) *Error {
	e := &Error{Err: fmt.Errorf(format, args...)}
	switch {
	case o.flag != "":
		e.Key = o.flag
	case file != "" && o.line > 0:
		e.File, e.Line, e.Column, e.Key = file, o.line, o.col, o.path
	default:
		e.Key = name
	}
	return e
}

// suggest returns the name in names closest to s, if it is close enough
// to be a likely typo: at most a third of its letters off.
func suggest(s string, names []string) string {
	best, bestD := "", len(s)/3+1
	for _, n := range names {
		if d := distance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b: the fewest
// insertions, deletions and substitutions of bytes that turn a into b.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		// Far from every key; not worth the quadratic work.
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
