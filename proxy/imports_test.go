package proxy_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportDirection keeps proxy/ where docs/design.md puts it: it may use the
// standard library, prometheus, policy, certs and its own sub-packages,
// nothing else of gatehouse (never enforcer, bpf, rules or internal), and
// proxy/relay stays free of HTTP, policy and tenants.
func TestImportDirection(t *testing.T) {
	const mod = "github.com/gatehouse-dmz/gatehouse/"
	allowed := map[string][]string{
		".":     {mod + "policy", mod + "certs", mod + "proxy/", "github.com/prometheus/client_golang/"},
		"http":  {mod + "policy", mod + "certs", mod + "proxy/relay", "github.com/prometheus/client_golang/", "golang.org/x/text/unicode/norm", "golang.org/x/net/http/httpguts"},
		"relay": {},
	}
	for dir, ok := range allowed {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		if len(files) == 0 {
			t.Fatalf("no Go files in %s", dir)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if first, _, _ := strings.Cut(p, "/"); !strings.Contains(first, ".") {
					if dir == "relay" && (strings.HasPrefix(p, "net/http") || p == "encoding/xml") {
						t.Errorf("%s imports %s: relay knows no protocol", f, p)
					}
					continue // standard library
				}
				good := false
				for _, prefix := range ok {
					if p == prefix || strings.HasSuffix(prefix, "/") && strings.HasPrefix(p, prefix) {
						good = true
					}
				}
				if !good {
					t.Errorf("%s imports %s", f, p)
				}
			}
		}
	}
}
