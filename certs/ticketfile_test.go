package certs

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTicketKey is one line of a ticket key file: n random bytes in base64,
// as `openssl rand -base64 n` writes them.
func newTicketKey(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func writeTicketKeys(t testing.TB, path string, mode os.FileMode, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// TestTicketKeysAcrossNodes: two nodes that read the same tls.ticket_keys
// file resume each other's sessions, on both TLS versions; a resumption on
// node B is still authorised there, so a certificate B's CRL revokes is
// refused although A issued the ticket; a node with another key file does
// a full handshake.
func TestTicketKeysAcrossNodes(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			k := newPKI(t)
			dir := t.TempDir()
			fleet := filepath.Join(dir, "ticket.keys")
			writeTicketKeys(t, fleet, 0o600, "# current first", newTicketKey(t, 48), newTicketKey(t, 32))
			p := clonePolicy(k.policy)
			p.TLS.TicketKeys = fleet
			// B has a CRL file of its own, so revoking there leaves A alone.
			pb := clonePolicy(p)
			crlB := filepath.Join(dir, "b.crl")
			k.acmeCA.CRL(t, crlB, time.Now().Add(time.Hour), k.revoked)
			pb.Tenants[0].CRL = crlB
			a := newManager(t, Config{StateDir: t.TempDir()}, p)
			b := newManager(t, Config{StateDir: t.TempDir()}, pb)
			srvA, _ := a.TLSConfig("web")
			srvB, _ := b.TLSConfig("web")

			cc := k.clientConfig(k.acme)
			cc.MaxVersion = v
			cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if r := handshake(t, srvA, cc, false); r.serverErr != nil || r.server.DidResume {
				t.Fatalf("first handshake on A: err %v resumed %v", r.serverErr, r.server.DidResume)
			}
			r := handshake(t, srvB, cc, false)
			if r.serverErr != nil || !r.server.DidResume || !r.client.DidResume {
				t.Fatalf("on B: err %v resumed %v/%v, want the session made on A resumed", r.serverErr, r.server.DidResume, r.client.DidResume)
			}
			// The listener's keys are its own on every node.
			otherB, _ := b.TLSConfig("mainframe")
			if r := handshake(t, otherB, cc, false); r.serverErr != nil || r.server.DidResume {
				t.Fatalf("other listener: err %v resumed %v, want a full handshake", r.serverErr, r.server.DidResume)
			}

			// A third node with its own key file does not resume.
			own := filepath.Join(dir, "own.keys")
			writeTicketKeys(t, own, 0o600, newTicketKey(t, 48))
			pc := clonePolicy(p)
			pc.TLS.TicketKeys = own
			c := newManager(t, Config{StateDir: t.TempDir()}, pc)
			srvC, _ := c.TLSConfig("web")
			cc2 := k.clientConfig(k.acme)
			cc2.MaxVersion = v
			cc2.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if r := handshake(t, srvA, cc2, false); r.serverErr != nil {
				t.Fatal(r.serverErr)
			}
			if r := handshake(t, srvC, cc2, false); r.serverErr != nil || r.server.DidResume {
				t.Fatalf("node with other keys: err %v resumed %v, want a full handshake", r.serverErr, r.server.DidResume)
			}

			// Revoke the certificate on B only: the ticket from A is
			// refused there in VerifyConnection, while A still resumes it.
			cc3 := k.clientConfig(k.acme)
			cc3.MaxVersion = v
			cc3.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if r := handshake(t, srvA, cc3, false); r.serverErr != nil {
				t.Fatal(r.serverErr)
			}
			k.acmeCA.CRL(t, crlB, time.Now().Add(time.Hour), k.revoked, k.acme)
			if err := b.Reload(); err != nil {
				t.Fatal(err)
			}
			r = handshake(t, srvB, cc3, false)
			if ResultOf(r.serverErr) != ResultRevoked {
				t.Fatalf("resumption on B after revocation: %v, want revoked", r.serverErr)
			}
			if !r.server.DidResume {
				t.Fatal("the refused handshake on B was not a resumption: the test proves nothing")
			}
		})
	}
}

// TestTicketKeysRotation: the documented rotation. A new key put first
// encrypts new tickets while the old one still decrypts; once the old key
// is dropped from the file and the file reloaded, its tickets no longer
// resume.
func TestTicketKeysRotation(t *testing.T) {
	k := newPKI(t)
	file := filepath.Join(t.TempDir(), "ticket.keys")
	oldKey, newKey := newTicketKey(t, 48), newTicketKey(t, 48)
	writeTicketKeys(t, file, 0o640, oldKey)
	p := clonePolicy(k.policy)
	p.TLS.TicketKeys = file
	m := newManager(t, Config{}, p)
	srv, _ := m.TLSConfig("web")
	session := func() *tls.Config {
		cc := k.clientConfig(k.acme)
		cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
		if r := handshake(t, srv, cc, false); r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		return cc
	}
	resumes := func(cc *tls.Config) bool {
		t.Helper()
		r := handshake(t, srv, cc, false)
		if r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		return r.server.DidResume
	}
	underOld := session()
	writeTicketKeys(t, file, 0o640, newKey, oldKey)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if !resumes(underOld) {
		t.Fatal("a ticket under the previous key no longer resumes while the key is still in the file")
	}
	// New tickets are under the new key, so dropping the old one leaves
	// them alone.
	underNew := session()
	writeTicketKeys(t, file, 0o640, newKey)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if !resumes(underNew) {
		t.Fatal("a ticket issued after the new key went first does not resume once the old key is dropped")
	}
	stale := k.clientConfig(k.acme)
	stale.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	writeTicketKeys(t, file, 0o640, oldKey)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if r := handshake(t, srv, stale, false); r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	writeTicketKeys(t, file, 0o640, newKey)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if resumes(stale) {
		t.Fatal("a ticket under a key removed from the file resumed")
	}
}

// TestTicketKeysRefused: a bad file is refused with its reason, by Apply
// (what gatehouse check runs) and by a reload, which keeps the keys in
// force.
func TestTicketKeysRefused(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	good := newTicketKey(t, 32)
	many := make([]string, maxTicketFileKeys+1)
	for i := range many {
		many[i] = newTicketKey(t, 32)
	}
	cases := []struct {
		name  string
		mode  os.FileMode
		lines []string
		want  error
	}{
		{"world readable", 0o644, []string{good}, ErrTicketKeysOpen},
		{"group writable", 0o660, []string{good}, ErrTicketKeysOpen},
		{"short key", 0o600, []string{newTicketKey(t, 16)}, ErrTicketKeyBad},
		{"odd length key", 0o600, []string{newTicketKey(t, 40)}, ErrTicketKeyBad},
		{"not base64", 0o600, []string{"not a key at all!"}, ErrTicketKeyBad},
		{"duplicate", 0o600, []string{good, newTicketKey(t, 32), good}, ErrTicketKeyDuplicate},
		{"too many", 0o600, many, ErrTicketKeysTooMany},
		{"empty", 0o600, []string{"# nothing yet"}, ErrTicketKeysEmpty},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writeTicketKeys(t, file, tc.mode, tc.lines...)
			p := clonePolicy(k.policy)
			p.TLS.TicketKeys = file
			m, _ := New(Config{})
			if err := m.Apply(p); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), file) {
				t.Fatalf("Apply: %v, want %v naming the file", err, tc.want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		p := clonePolicy(k.policy)
		p.TLS.TicketKeys = filepath.Join(dir, "absent")
		m, _ := New(Config{})
		if err := m.Apply(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Apply: %v, want not exist", err)
		}
	})
	t.Run("reload keeps the keys in force", func(t *testing.T) {
		file := filepath.Join(dir, "reload.keys")
		writeTicketKeys(t, file, 0o600, good)
		p := clonePolicy(k.policy)
		p.TLS.TicketKeys = file
		m := newManager(t, Config{}, p)
		srv, _ := m.TLSConfig("web")
		cc := k.clientConfig(k.acme)
		cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
		if r := handshake(t, srv, cc, false); r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		writeTicketKeys(t, file, 0o600, newTicketKey(t, 8))
		if err := m.Reload(); !errors.Is(err, ErrTicketKeyBad) {
			t.Fatalf("Reload: %v, want %v", err, ErrTicketKeyBad)
		}
		if r := handshake(t, srv, cc, false); r.serverErr != nil || !r.server.DidResume {
			t.Fatalf("after a refused reload: err %v resumed %v, want the previous keys in force", r.serverErr, r.server.DidResume)
		}
	})
}

// TestTicketFileModeIsTheReadFiles: the mode checked is that of the file
// whose keys are read. A symlink swapped between a 0600 file and a
// world-readable one while the daemon loads must never give it the
// world-readable file's keys (checking one path, then reading it again,
// let the swap land in between).
func TestTicketFileModeIsTheReadFiles(t *testing.T) {
	dir := t.TempDir()
	private, open := filepath.Join(dir, "private"), filepath.Join(dir, "open")
	writeTicketKeys(t, private, 0o600, newTicketKey(t, 48))
	openKey := newTicketKey(t, 48)
	writeTicketKeys(t, open, 0o644, openKey)
	os.Chmod(open, 0o644) // whatever the umask
	link := filepath.Join(dir, "ticket.keys")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		tmp := filepath.Join(dir, "next")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := private
			if i%2 == 1 {
				target = open
			}
			os.Remove(tmp)
			if os.Symlink(target, tmp) == nil {
				os.Rename(tmp, link) // atomic: the link always exists
			}
		}
	}()
	defer func() { close(stop); <-swapped }()
	want, _ := base64.StdEncoding.DecodeString(openKey)
	for range 20000 {
		keys, err := loadTicketFile(&loader{src: OSFiles{}, files: map[string]fileSig{}}, link)
		if err == nil && len(keys) == 1 && string(keys[0]) == string(want) {
			t.Fatal("the keys of a world-readable file were taken")
		}
	}
}
