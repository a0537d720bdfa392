package test

import (
	"encoding/json"
	"io"
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "github.com/gatehouse-dmz/gatehouse"

// The import rules are not kept here: TestImportDirection reads them from
// the design doc's package table (designPackages, design_test.go), so the
// doc and the check cannot drift. A folder without a row there may not
// exist; subfolders inherit their parent's row and may import their own
// subtree.

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string
	GoFiles    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// rowFor finds the table row that governs a folder: its own, or its
// nearest listed parent's.
func rowFor(allowed map[string][]string, dir string) (string, []string, bool) {
	for d := dir; d != "." && d != "/"; d = path.Dir(d) {
		if row, ok := allowed[d]; ok {
			return d, row, true
		}
	}
	return "", nil, false
}

func within(dir, folder string) bool {
	return dir == folder || strings.HasPrefix(dir, folder+"/")
}

func TestImportDirection(t *testing.T) {
	allowed := designPackages(t)
	for _, p := range listPackages(t) {
		dir := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		owner, row, ok := rowFor(allowed, dir)
		if !ok {
			t.Errorf("%s: folder not in %s's package table", dir, designDoc)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				if owner == "policy" && strings.Contains(strings.Split(imp, "/")[0], ".") {
					t.Errorf("policy must import the standard library only, imports %s", imp)
				}
				continue
			}
			target := strings.TrimPrefix(imp, module+"/")
			if within(target, testOnly) {
				t.Errorf("%s imports %s, which only tests may import (%s)", dir, target, designDoc)
				continue
			}
			if within(target, owner) || (len(row) == 1 && row[0] == "*") {
				continue
			}
			ok := false
			for _, a := range row {
				if within(target, a) {
					ok = true
				}
			}
			if within(target, "cmd") {
				ok = false
			}
			if !ok {
				t.Errorf("%s imports %s: against %s (%s may import only %v)", dir, target, designDoc, owner, row)
			}
		}
	}
}

func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) > 0 && strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc: say what it owns and what it must not touch", p.ImportPath)
		}
	}
}
