package httpproxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strings"
	"testing"
)

// TestReasonsListsEveryReason: the series made ahead of the first refusal
// cover every Reason constant.
func TestReasonsListsEveryReason(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "inspect.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var consts []string
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, name := range vs.Names {
				if strings.HasPrefix(name.Name, "Reason") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok {
						consts = append(consts, strings.Trim(lit.Value, `"`))
					}
				}
			}
		}
		return true
	})
	got := slices.Sorted(slices.Values(reasons))
	slices.Sort(consts)
	if len(consts) == 0 || !slices.Equal(got, consts) {
		t.Errorf("reasons %q, want every Reason constant %q", got, consts)
	}
}
