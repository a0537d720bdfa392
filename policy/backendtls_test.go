package policy

import "testing"

func TestCheckPlainBackend(t *testing.T) {
	if err := (Route{BackendKey: "k.pem"}).CheckPlainBackend(); err == nil {
		t.Error("a plain route with a backend key passed")
	}
	if err := (Route{}).CheckPlainBackend(); err != nil {
		t.Errorf("a plain route: %v", err)
	}
}
