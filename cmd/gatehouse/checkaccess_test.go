package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRefusesWhatRunRefusesOfAccess: an admin CA file with no
// certificate in it and an admin endpoint certificate that does not load
// pass the configuration's validation (the files are readable) but run
// refuses them: so does check, naming them.
func TestCheckRefusesWhatRunRefusesOfAccess(t *testing.T) {
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := `
access:
  https: {listen: "127.0.0.1:9443", server_cert: testdata/check/server.pem, server_key: testdata/check/server.key}
  grants:
    - {role: admin, scope: global, certificates: [{client_ca: testdata/check/acme-ca.pem, crl: none, identities: {cn: [ops]}}]}
`
	for name, tc := range map[string]struct{ access, want string }{
		"good":          {good, ""},
		"junk admin CA": {strings.Replace(good, "client_ca: testdata/check/acme-ca.pem", "client_ca: "+junk, 1), "access.grants[0].certificates[0].client_ca: no certificate in " + junk},
		"junk endpoint": {strings.Replace(good, "server_cert: testdata/check/server.pem", "server_cert: "+junk, 1), "access.https: tls: failed to find any PEM data"},
	} {
		b, err := os.ReadFile("testdata/check/good.yaml")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "test.yaml")
		if err := os.WriteFile(path, append(b, tc.access...), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err = runCLI("check", "-c", path)
		var ee exitError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: check refused: %v", name, err)
		case tc.want != "" && (!errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, tc.want)):
			t.Errorf("%s: check = %v, want exit 1 with %q", name, err, tc.want)
		}
	}
}
