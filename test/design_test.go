package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// designDoc is the design doc, relative to the module root. Its
// "Packages" table is the import rule TestImportDirection enforces, and
// its "Metrics" list must name every metric gatehouse exports.
const designDoc = "docs/design.md"

// testOnly is the folder the design doc reserves for tests: no package
// of the daemon may import it.
const testOnly = "internal/testkit"

// section returns the lines of a markdown document's level-2 section whose
// heading is title, up to the next level-2 heading.
func section(doc, title string) ([]string, error) {
	var out []string
	in := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "## ") {
			if in {
				break
			}
			in = strings.TrimSpace(strings.TrimPrefix(line, "## ")) == title
			continue
		}
		if in {
			out = append(out, line)
		}
	}
	if !in {
		return nil, fmt.Errorf("no section %q", title)
	}
	return out, nil
}

var codeSpan = regexp.MustCompile("`([^`]*)`")

// parsePackageTable reads the "Packages" section's table: a header
// "| folder | owns | may import |", a separator, and one row per folder
// whose first cell is the folder in backticks and whose last lists the
// folders it may import in backticks ("*" for any, empty for none).
func parsePackageTable(doc string) (map[string][]string, error) {
	lines, err := section(doc, "Packages")
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break // the table ended
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	if len(rows) < 3 {
		return nil, fmt.Errorf("section Packages: no table with a header, a separator and rows")
	}
	if want := []string{"folder", "owns", "may import"}; !slices.Equal(rows[0], want) {
		return nil, fmt.Errorf("section Packages: table header is %q, want %q", rows[0], want)
	}
	allowed := map[string][]string{}
	for i, cells := range rows[2:] {
		if len(cells) != 3 {
			return nil, fmt.Errorf("section Packages: row %d has %d cells, want 3 (a | inside a cell?)", i+1, len(cells))
		}
		f := codeSpan.FindAllStringSubmatch(cells[0], -1)
		if len(f) != 1 || strings.TrimSpace(strings.Trim(cells[0], "`")) != f[0][1] {
			return nil, fmt.Errorf("section Packages: row %d: first cell %q is not one folder in backticks", i+1, cells[0])
		}
		folder := strings.TrimSuffix(f[0][1], "/")
		if _, dup := allowed[folder]; dup {
			return nil, fmt.Errorf("section Packages: folder %s has two rows", folder)
		}
		imports := []string{}
		rest := cells[2]
		for _, m := range codeSpan.FindAllStringSubmatch(cells[2], -1) {
			imports = append(imports, strings.TrimSuffix(m[1], "/"))
			rest = strings.Replace(rest, m[0], "", 1)
		}
		if strings.Trim(rest, " ,") != "" {
			return nil, fmt.Errorf("section Packages: row %s: may import %q holds text outside backticks", folder, cells[2])
		}
		if slices.Contains(imports, "*") && len(imports) != 1 {
			return nil, fmt.Errorf("section Packages: row %s: * together with folders", folder)
		}
		allowed[folder] = imports
	}
	return allowed, nil
}

// designPackages reads the package table of the design doc and checks that
// every folder it names exists.
func designPackages(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", designDoc))
	if err != nil {
		t.Fatalf("the import rules live in %s: %v", designDoc, err)
	}
	allowed, err := parsePackageTable(string(b))
	if err != nil {
		t.Fatalf("%s: %v", designDoc, err)
	}
	for folder, row := range allowed {
		for _, d := range append([]string{folder}, row...) {
			if d == "*" {
				continue
			}
			if fi, err := os.Stat(filepath.Join("..", d)); err != nil || !fi.IsDir() {
				t.Errorf("%s: the package table names folder %s, which does not exist", designDoc, d)
			}
		}
	}
	if _, ok := allowed[testOnly]; !ok {
		t.Errorf("%s: the package table has no row for %s", designDoc, testOnly)
	}
	return allowed
}

// TestPackageTableParse keeps the parser honest: it must read a good
// table and refuse the ways a table goes wrong, so a broken doc fails
// loudly instead of allowing everything.
func TestPackageTableParse(t *testing.T) {
	good := "# x\n\n## Packages\n\ntext\n\n| folder | owns | may import |\n|---|---|---|\n" +
		"| `cmd/gatehouse` | the binary | `*` |\n| `policy` | the model | |\n| `rules` | feeds | `policy` |\n" +
		"| `proxy` | proxies | `certs`, `policy` |\n\nafter\n\n## Next\n| `x` | y | `z` |\n"
	got, err := parsePackageTable(good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"cmd/gatehouse": {"*"}, "policy": {}, "rules": {"policy"}, "proxy": {"certs", "policy"}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
	bad := map[string]string{
		"no section":     "# x\n## Other\n| folder | owns | may import |\n|---|---|---|\n| `a` | b | |\n",
		"no table":       "## Packages\ntext only\n",
		"wrong header":   "## Packages\n| dir | owns | imports |\n|---|---|---|\n| `a` | b | |\n",
		"no rows":        "## Packages\n| folder | owns | may import |\n|---|---|---|\n",
		"four cells":     "## Packages\n| folder | owns | may import |\n|---|---|---|\n| `a` | b | c | `d` |\n",
		"folder bare":    "## Packages\n| folder | owns | may import |\n|---|---|---|\n| a | b | |\n",
		"two folders":    "## Packages\n| folder | owns | may import |\n|---|---|---|\n| `a`, `b` | b | |\n",
		"duplicate":      "## Packages\n| folder | owns | may import |\n|---|---|---|\n| `a` | b | |\n| `a/` | c | |\n",
		"prose imports":  "## Packages\n| folder | owns | may import |\n|---|---|---|\n| `a` | b | everything below |\n",
		"star and names": "## Packages\n| folder | owns | may import |\n|---|---|---|\n| `a` | b | `*`, `c` |\n",
	}
	for name, doc := range bad {
		if got, err := parsePackageTable(doc); err == nil {
			t.Errorf("%s: parsed as %v, want an error", name, got)
		}
	}
}

// readmeMetrics returns the metric names in the first column of the
// README's Metrics table.
func readmeMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines, err := section(string(b), "Metrics")
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	names := map[string]bool{}
	for _, line := range lines {
		if !strings.HasPrefix(line, "| `gatehouse_") {
			continue
		}
		first := strings.Split(strings.Trim(line, "|"), "|")[0]
		for _, m := range metricNameRE.FindAllString(first, -1) {
			names[m] = true
		}
	}
	return names
}

// TestDesignNamesEveryMetric keeps the design doc's metric list level with
// the README's metrics table and with the metrics the code declares, both
// ways: a metric added without the doc, or one the doc still names after
// it was removed, fails.
func TestDesignNamesEveryMetric(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", designDoc))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := section(string(b), "Metrics")
	if err != nil {
		t.Fatalf("%s: %v", designDoc, err)
	}
	doc := map[string]bool{}
	for _, m := range metricNameRE.FindAllString(strings.Join(lines, "\n"), -1) {
		doc[m] = true
	}
	readme := readmeMetrics(t)
	code := exportedMetricNames(t)
	for what, names := range map[string]map[string]bool{designDoc: doc, "README.md's metrics table": readme, "the Go sources": code} {
		if len(names) < 20 {
			t.Fatalf("%s: found only %d metric names; the scan is broken", what, len(names))
		}
	}
	var missing []string
	for name := range readme {
		if !doc[name] {
			missing = append(missing, name+" (README)")
		}
	}
	for name := range code {
		if !doc[name] && !readme[name] {
			missing = append(missing, name+" (code)")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("%s's metric list does not name %s", designDoc, m)
	}
	for name := range doc {
		if !knownMetric(code, name) {
			t.Errorf("%s names %s, which no Go file of gatehouse exports", designDoc, name)
		}
	}
}
