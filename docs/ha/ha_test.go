package ha

import (
	"io/fs"
	"os"
	"strings"
	"testing"
)

// fencedBlocks returns the contents of the ``` blocks of a Markdown text.
func fencedBlocks(md string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			if in {
				blocks = append(blocks, strings.Join(cur, "\n")+"\n")
			}
			in, cur = !in, nil
			continue
		}
		if in {
			cur = append(cur, line)
		}
	}
	return blocks
}

// docs/ha.md shows each file as it is, so the guide and what the tests
// run cannot drift apart.
func TestGuideShowsTheFiles(t *testing.T) {
	md, err := os.ReadFile("../ha.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := fencedBlocks(string(md))
	for _, name := range []string{Keepalived, Conntrackd, PrimaryBackup} {
		b, err := fs.ReadFile(Files, name)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, blk := range blocks {
			found = found || blk == string(b)
		}
		if !found {
			t.Errorf("docs/ha.md has no code block equal to docs/ha/%s", name)
		}
	}
}

func TestFencedBlocks(t *testing.T) {
	got := fencedBlocks("a\n```\nx\ny\n```\nb\n```sh\nz\n```\n")
	if len(got) != 2 || got[0] != "x\ny\n" || got[1] != "z\n" {
		t.Errorf("fencedBlocks = %q", got)
	}
}
