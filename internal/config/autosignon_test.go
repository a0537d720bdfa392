package config

import (
	"strings"
	"testing"
)

// TestRefuseAutoSignOn: a tn5250 route refuses auto sign-on unless it says
// refuse_auto_sign_on: false; a tn3270 route never allows it, and takes
// only the harmless false.
func TestRefuseAutoSignOn(t *testing.T) {
	listener := func(proto, key string) string {
		return goodYAML + `  - name: as400
    listen: "192.0.2.1:9992"
    protocol: ` + proto + `
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes:
      - {tenant: acme, backend: "192.0.2.8:23"` + key + `}
`
	}
	for _, tc := range []struct {
		proto, key string
		allow      bool
	}{
		{"tn5250", "", false},
		{"tn5250", ", refuse_auto_sign_on: true", false},
		{"tn5250", ", refuse_auto_sign_on: false", true},
		{"tn3270", "", false},
		{"tn3270", ", refuse_auto_sign_on: false", false},
	} {
		cfg, err := parse(t, listener(tc.proto, tc.key), nil)
		if err != nil {
			t.Fatalf("%s%s: %v", tc.proto, tc.key, err)
		}
		if got := cfg.Policy().Listeners[2].Routes[0].AllowsAutoSignOn; got != tc.allow {
			t.Errorf("%s%s: auto sign-on allowed %v, want %v", tc.proto, tc.key, got, tc.allow)
		}
	}
	_, err := parse(t, listener("tn3270", ", refuse_auto_sign_on: true"), nil)
	if err == nil || !strings.Contains(err.Error(), "refuse_auto_sign_on") {
		t.Errorf("refuse_auto_sign_on on a tn3270 route: %v, want a problem naming the key", err)
	}
}
