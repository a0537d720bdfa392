package httpproxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestConfigFieldsReached: every field of Config is set by the code that
// runs the proxy, outside tests. A setting only tests reach is dead code
// that looks alive (STYLE.md): a limit an admin cannot change and a
// reader takes for configurable. Fixed bounds are documented constants.
func TestConfigFieldsReached(t *testing.T) {
	set := map[string]bool{}
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Config" {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "httpproxy" {
				return true
			}
			for _, e := range lit.Elts {
				if kv, ok := e.(*ast.KeyValueExpr); ok {
					if k, ok := kv.Key.(*ast.Ident); ok {
						set[k.Name] = true
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(set) == 0 {
		t.Fatal("no httpproxy.Config literal outside tests")
	}
	for f := range reflect.TypeFor[Config]().Fields() {
		if !set[f.Name] {
			t.Errorf("Config.%s is set by no code outside tests", f.Name)
		}
	}
}
