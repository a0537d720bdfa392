package httpproxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocComments: every doc comment of the package belongs to the
// declaration it describes. A doc comment starts with the declared name,
// exported names have one, and no comment that reads as a declaration's doc
// (it starts with a declared name) floats outside any declaration, where go
// doc never shows it.
func TestDocComments(t *testing.T) {
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, path := range paths {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		t.Fatal("no source files of package httpproxy found")
	}
	names := map[string]bool{}
	attached := map[*ast.CommentGroup]bool{}
	type doc struct {
		name     string
		exported bool
		group    *ast.CommentGroup
		pos      token.Pos
	}
	var docs []doc
	for _, f := range files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				names[d.Name.Name] = true
				exported := d.Name.IsExported()
				if d.Recv != nil {
					// Shown by go doc only on an exported type.
					recv := d.Recv.List[0].Type
					if star, ok := recv.(*ast.StarExpr); ok {
						recv = star.X
					}
					exported = exported && ast.IsExported(recv.(*ast.Ident).Name)
				}
				docs = append(docs, doc{d.Name.Name, exported, d.Doc, d.Pos()})
			case *ast.GenDecl:
				for _, s := range d.Specs {
					ts, ok := s.(*ast.TypeSpec)
					if !ok {
						continue
					}
					names[ts.Name.Name] = true
					g := ts.Doc
					if g == nil && len(d.Specs) == 1 {
						g = d.Doc
					}
					docs = append(docs, doc{ts.Name.Name, ts.Name.IsExported(), g, ts.Pos()})
				}
			}
		}
	}
	for _, d := range docs {
		attached[d.group] = true
		switch {
		case d.group == nil && d.exported:
			t.Errorf("%s: %s has no doc comment", fset.Position(d.pos), d.name)
		case d.group != nil && !strings.HasPrefix(d.group.Text(), d.name+" "):
			t.Errorf("%s: the doc comment of %s starts %q", fset.Position(d.pos), d.name, firstLine(d.group))
		}
	}
	for _, f := range files {
	comments:
		for _, c := range f.Comments {
			if c == f.Doc || attached[c] {
				continue
			}
			for _, d := range f.Decls {
				if g, ok := d.(*ast.GenDecl); ok && g.Doc == c {
					continue comments
				}
				if c.Pos() >= d.Pos() && c.End() <= d.End() {
					continue comments // inside a declaration
				}
			}
			word, _, _ := strings.Cut(c.Text(), " ")
			if names[word] {
				t.Errorf("%s: a comment about %s outside any declaration: %q", fset.Position(c.Pos()), word, firstLine(c))
			}
		}
	}
}

func firstLine(c *ast.CommentGroup) string {
	line, _, _ := strings.Cut(c.Text(), "\n")
	return line
}
