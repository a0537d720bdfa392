package bpf

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestObjectsPathIndependent guards reproducibility: a committed object
// that embeds the directory it was built in would differ in every clone.
func TestObjectsPathIndependent(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gatehouse_bpfel.o", "gatehouselpm_bpfel.o"} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, dir := range []string{wd, filepath.Dir(wd)} {
			if bytes.Contains(data, []byte(dir)) {
				t.Errorf("%s embeds the build directory %s", name, dir)
			}
		}
		if !bytes.Contains(data, []byte("gatehouse.c")) {
			t.Errorf("%s has no BTF line info naming gatehouse.c", name)
		}
	}
}

// TestSpecsLoad checks that both objects parse and carry the maps and
// program the rest of gatehouse refers to by name (no kernel needed).
func TestSpecsLoad(t *testing.T) {
	for _, lpm := range []bool{false, true} {
		spec, err := Spec(lpm)
		if err != nil {
			t.Fatal(err)
		}
		names := []string{MapGen, MapCounters, MapState, MapBlock4, MapBlock6}
		if lpm {
			names = append(names, MapLPM4, MapLPM6)
		}
		for _, n := range names {
			if spec.Maps[n] == nil {
				t.Errorf("lpm=%v: map %s missing", lpm, n)
			}
		}
		if spec.Programs[ProgXDP] == nil {
			t.Errorf("lpm=%v: program %s missing", lpm, ProgXDP)
		}
		inner := spec.Maps[MapGen].InnerMap
		if inner == nil || inner.ValueSize != PageSize || inner.MaxEntries != MaxPages {
			t.Errorf("lpm=%v: generation map spec %+v does not match PageSize/MaxPages", lpm, inner)
		}
	}
}
