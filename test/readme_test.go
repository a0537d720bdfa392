package test

import (
	"bytes"
	"flag"
	"os"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

var update = flag.Bool("update", false, "rewrite generated parts of README.md")

const (
	beginDefault = "<!-- BEGIN default config -->\n"
	endDefault   = "<!-- END default config -->\n"
)

// TestReadmeConfigReference keeps the README's configuration reference
// identical to the embedded default configuration.
func TestReadmeConfigReference(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	begin := bytes.Index(readme, []byte(beginDefault))
	end := bytes.Index(readme, []byte(endDefault))
	if begin < 0 || end < begin {
		t.Fatal("README.md lacks the default config markers")
	}
	want := "```yaml\n" + string(config.Default) + "```\n"
	got := string(readme[begin+len(beginDefault) : end])
	if got == want {
		return
	}
	if !*update {
		t.Fatal("README.md's configuration reference differs from the embedded default: go test ./test -run TestReadmeConfigReference -update")
	}
	out := append(append(append([]byte{}, readme[:begin+len(beginDefault)]...), want...), readme[end:]...)
	if err := os.WriteFile("../README.md", out, 0o644); err != nil {
		t.Fatal(err)
	}
}
