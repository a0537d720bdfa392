package proxy_test

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// validators only check limits, they do not enforce them: a field read
// there alone has no effect.
var validators = map[string]bool{"checkLimits": true, "checkTenantLimits": true, "DescriptorsNeeded": true, "checkDescriptorBudget": true}

// TestEveryLimitIsRead: every field of policy.Limits, and of the limit
// structs in it, is read by the code of proxy/ and its sub-packages
// outside the functions that only validate them. A field no code reads is
// a configuration key that looks alive and does nothing.
func TestEveryLimitIsRead(t *testing.T) {
	const mod = "github.com/gatehouse-dmz/gatehouse"
	out, err := exec.Command("go", "list", "-export", "-deps", "-f", "{{.ImportPath}} {{.Export}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	exports := map[string]string{}
	for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
		if path, file, ok := strings.Cut(sc.Text(), " "); ok && file != "" {
			exports[path] = file
		}
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) { return os.Open(exports[path]) })
	pol, err := imp.Import(mod + "/policy")
	if err != nil {
		t.Fatal(err)
	}
	// The fields to account for: Limits' and those of the structs in it.
	var fields []*types.Var
	owner := map[*types.Var]string{}
	for _, name := range []string{"Limits", "HTTPLimits", "StreamLimits", "TelnetLimits"} {
		st := pol.Scope().Lookup(name).Type().Underlying().(*types.Struct)
		for i := range st.NumFields() {
			fields = append(fields, st.Field(i))
			owner[st.Field(i)] = name
		}
	}
	read := map[*types.Var]bool{}
	for _, dir := range []string{".", "http", "relay", "telnet"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		var syntax []*ast.File
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			syntax = append(syntax, af)
		}
		info := &types.Info{Selections: map[*ast.SelectorExpr]*types.Selection{}}
		conf := types.Config{Importer: imp.(types.ImporterFrom)}
		if _, err := conf.Check(mod+"/proxy/"+dir, fset, syntax, info); err != nil {
			t.Fatalf("type-check %s: %v", dir, err)
		}
		for _, af := range syntax {
			for _, decl := range af.Decls {
				if fd, ok := decl.(*ast.FuncDecl); ok && validators[fd.Name.Name] {
					continue
				}
				ast.Inspect(decl, func(n ast.Node) bool {
					se, ok := n.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					if sel := info.Selections[se]; sel != nil && sel.Kind() == types.FieldVal {
						// A promoted field reads the embedded ones on its way.
						typ := sel.Recv()
						for _, i := range sel.Index() {
							if p, ok := typ.Underlying().(*types.Pointer); ok {
								typ = p.Elem()
							}
							st, ok := typ.Underlying().(*types.Struct)
							if !ok {
								break
							}
							read[st.Field(i)] = true
							typ = st.Field(i).Type()
						}
					}
					return true
				})
			}
		}
	}
	for _, f := range fields {
		if !read[f] {
			t.Errorf("policy.%s.%s is read by no code of the proxies but validation: wire it, or remove it", owner[f], f.Name())
		}
	}
}
