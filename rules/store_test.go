package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestStoreAtomicAndNames(t *testing.T) {
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := Bundle{Manifest: []byte("m"), Signatures: [][]byte{[]byte("s")}, Files: map[string][]byte{"f": []byte("data")}}
	if err := st.Save("aws", 1, b); err != nil {
		t.Fatal(err)
	}
	got, err := st.loadBundle("aws", lkgSuffix)
	if err != nil || string(got.Files["f"]) != "data" || string(got.Manifest) != "m" {
		t.Fatalf("load: %v %+v", err, got)
	}
	ents, _ := os.ReadDir(st.Dir())
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	if err := st.Save("../x", 1, b); err == nil {
		t.Error("path in feed name accepted")
	}
	d := sha256.Sum256([]byte("m"))
	if err := st.WriteAccept("aws", d); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := st.ReadAccept("aws"); err != nil || !ok || got != d {
		t.Errorf("accept: %v %v %s", err, ok, hex.EncodeToString(got[:]))
	}
	if _, err := st.loadBundle("gcp", lkgSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing feed: %v", err)
	}
}
