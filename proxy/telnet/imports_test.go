package telnet

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the package below proxy: it may use the standard
// library, policy, certs (for the Peer), prometheus and the relay plumbing
// (proxy/relay), never
// proxy (which imports it) nor anything else of gatehouse.
func TestImports(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f == "doc.go" && (af.Doc == nil || !strings.HasPrefix(af.Doc.Text(), "Package telnet ")) {
			t.Error("doc.go has no package doc")
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(p, "/")
			if !strings.Contains(first, ".") || p == "github.com/gatehouse-dmz/gatehouse/policy" || p == "github.com/gatehouse-dmz/gatehouse/certs" ||
				p == "github.com/gatehouse-dmz/gatehouse/proxy/relay" ||
				strings.HasPrefix(p, "github.com/prometheus/client_golang/") {
				continue
			}
			t.Errorf("%s imports %s", f, p)
		}
	}
}
