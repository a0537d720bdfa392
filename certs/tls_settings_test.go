package certs

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestSessionTicketsReload: tls.session_tickets switches resumption off and
// on again through Apply (SIGHUP), on the config the listener already
// holds. Off, no ticket key is written and a ticket the client holds does
// not resume.
func TestSessionTicketsReload(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	off := clonePolicy(k.policy)
	off.TLS.SessionTicketsDisabled = true
	m := newManager(t, Config{StateDir: dir}, off)
	srv, _ := m.TLSConfig("web")
	cc := k.clientConfig(k.acme)
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	resumed := func() bool {
		t.Helper()
		r := handshake(t, srv, cc, false)
		if r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		return r.server.DidResume
	}
	for range 2 {
		if resumed() {
			t.Fatal("resumed with session tickets off")
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "tls-tickets", "web")); !os.IsNotExist(err) {
		t.Errorf("ticket key file with tickets off: %v", err)
	}
	if err := m.Apply(k.policy); err != nil {
		t.Fatal(err)
	}
	resumed() // the ticket comes with this one
	if !resumed() {
		t.Fatal("no resumption once tickets are switched on")
	}
	if err := m.Apply(off); err != nil {
		t.Fatal(err)
	}
	if resumed() {
		t.Error("a ticket resumed after tickets were switched off again")
	}
}

// TestTicketRotationReload: a shorter tls.ticket_rotation applied by a
// reload rotates a key the longer period still kept.
func TestTicketRotationReload(t *testing.T) {
	k := newPKI(t)
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	long := clonePolicy(k.policy)
	long.TLS.TicketRotation = 24 * time.Hour
	m := newManager(t, Config{StateDir: t.TempDir(), Now: clock}, long)
	first := m.tickets["web"].keys[0]
	now.Add(int64(2 * time.Hour / time.Second))
	m.rotateTickets()
	if m.tickets["web"].keys[0] != first {
		t.Fatal("rotated after 2h with a 24h period")
	}
	short := clonePolicy(k.policy)
	short.TLS.TicketRotation = time.Hour
	if err := m.Apply(short); err != nil {
		t.Fatal(err)
	}
	// The new generation's configs encrypt with a fresh key at once.
	srv, _ := m.TLSConfig("web")
	cc := k.clientConfig(k.acme)
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if r := handshake(t, srv, cc, false); r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	if m.tickets["web"].keys[0] == first || len(m.tickets["web"].keys) != 2 {
		t.Fatal("a 2h old key kept after the period became 1h")
	}
	// A ticket under the fresh key resumes.
	if r := handshake(t, srv, cc, false); r.serverErr != nil || !r.server.DidResume {
		t.Fatalf("after the reload: err %v resumed %v", r.serverErr, r.server.DidResume)
	}
}

// TestTicketKeyFromTheFuture: a ticket key dated in the future (a clock set
// back, a file copied from a machine ahead) would never come of age and
// never rotate. It is treated as due, on load and in the rotation loop,
// and the log says why.
func TestTicketKeyFromTheFuture(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	file := filepath.Join(dir, "tls-tickets", "web")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	future := clock().Add(365 * 24 * time.Hour).Unix()
	if err := os.WriteFile(file, []byte(fmt.Sprintf("%d %s\n", future, strings.Repeat("ab", 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	m := newManager(t, Config{StateDir: dir, Now: clock, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, k.policy)
	newest := func() string {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(b), "\n")
		return first
	}
	if got, want := newest(), fmt.Sprint(now.Load()); !strings.HasPrefix(got, want+" ") {
		t.Fatalf("newest key after load %q, want one created now (%s)", got, want)
	}
	if !strings.Contains(logs.String(), "in the future") {
		t.Errorf("log does not say the key was dated in the future:\n%s", logs.String())
	}
	// The clock is set back an hour: the key made a moment ago is now
	// from the future too, and the rotation loop replaces it.
	made := newest()
	now.Add(-3600)
	m.rotateTickets()
	if got := newest(); got == made || !strings.HasPrefix(got, fmt.Sprint(now.Load())+" ") {
		t.Fatalf("after the clock went back: newest key %q, was %q", got, made)
	}
}

// TestRefusedApplyKeepsTickets: a refused Apply changes no ticket key: not
// the one in force (though due under the refused policy's shorter period),
// not its file, and it leaves no key file or set behind for a listener
// only the refused policy has. An applied policy without a listener drops
// its set.
func TestRefusedApplyKeepsTickets(t *testing.T) {
	k := newPKI(t)
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	dir := t.TempDir()
	file := filepath.Join(dir, "tls-tickets", "web")
	long := clonePolicy(k.policy)
	long.TLS.TicketRotation = 24 * time.Hour
	m := newManager(t, Config{StateDir: dir, Now: clock}, long)
	first := m.tickets["web"].keys[0]
	before := readFile(t, file)
	now.Add(2 * 3600)
	bad := clonePolicy(k.policy)
	bad.TLS.TicketRotation = time.Hour
	bad.Listeners[0].ServerCert = filepath.Join(dir, "missing.pem")
	bad.Listeners = append(bad.Listeners, policy.Listener{Name: "ghost", ServerCert: k.server.CertFile, ServerKey: k.server.KeyFile})
	if err := m.Apply(bad); err == nil {
		t.Fatal("a policy with a missing server certificate applied")
	}
	if m.tickets["web"].keys[0] != first || len(m.tickets["web"].keys) != 1 {
		t.Error("a refused Apply rotated the ticket key in force")
	}
	if after := readFile(t, file); string(after) != string(before) {
		t.Errorf("a refused Apply rewrote the key file:\n%s\nwas\n%s", after, before)
	}
	if _, err := os.Stat(filepath.Join(dir, "tls-tickets", "ghost")); !os.IsNotExist(err) {
		t.Errorf("key file of a listener only the refused policy has: %v", err)
	}
	if _, ok := m.tickets["ghost"]; ok {
		t.Error("ticket set of a listener only the refused policy has")
	}
	one := clonePolicy(long)
	one.Listeners = one.Listeners[:1]
	if err := m.Apply(one); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.tickets["mainframe"]; ok || len(m.tickets) != 1 {
		t.Errorf("ticket sets after the listener mainframe was removed: %v", m.tickets)
	}
}

// TestTicketKeysOutliveNoThreePeriods: a ticket resumes for at most three
// rotation periods after its key was made, also after downtime (the
// key file is read again) and after tickets were off for a while: one
// rotation then is not enough, the keys that old are dropped.
func TestTicketKeysOutliveNoThreePeriods(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	p := clonePolicy(k.policy)
	p.TLS.TicketRotation = 24 * time.Hour
	p.TLS.CRLStale = policy.CRLStaleWarn // acme's CRL is past nextUpdate days later
	t0 := time.Now()
	leaf := k.acmeCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "long"}, URIs: k.acme.Cert.URIs,
		NotAfter: t0.Add(30 * 24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	client := func() *tls.Config {
		cc := k.clientConfig(leaf)
		cc.MaxVersion = tls.VersionTLS12 // the ticket's own lifetime (7 days) is not what is tested
		cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
		return cc
	}
	resumes := func(m *Manager, cc *tls.Config) bool {
		t.Helper()
		srv, _ := m.TLSConfig("web")
		r := handshake(t, srv, cc, false)
		if r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		return r.server.DidResume
	}
	at := func(d time.Duration) func() time.Time { return func() time.Time { return t0.Add(d) } }
	m1 := newManager(t, Config{StateDir: dir, Now: at(0)}, p)
	twoDays, fiveDays := client(), client()
	resumes(m1, twoDays)
	resumes(m1, fiveDays)
	if !resumes(newManager(t, Config{StateDir: dir, Now: at(48 * time.Hour)}, p), twoDays) {
		t.Error("a two-day-old ticket did not resume after a restart (24h rotation)")
	}
	if resumes(newManager(t, Config{StateDir: dir, Now: at(5 * 24 * time.Hour)}, p), fiveDays) {
		t.Error("a five-day-old ticket resumed after a restart (24h rotation)")
	}

	// Tickets off for five days, then on again, in one manager.
	var now atomic.Int64
	now.Store(t0.Unix())
	m := newManager(t, Config{StateDir: t.TempDir(), Now: func() time.Time { return time.Unix(now.Load(), 0) }}, p)
	cc := client()
	resumes(m, cc)
	off := clonePolicy(p)
	off.TLS.SessionTicketsDisabled = true
	if err := m.Apply(off); err != nil {
		t.Fatal(err)
	}
	now.Add(5 * 24 * 3600)
	if err := m.Apply(p); err != nil {
		t.Fatal(err)
	}
	if resumes(m, cc) {
		t.Error("a five-day-old ticket resumed once tickets were switched on again (24h rotation)")
	}
	if n := len(m.tickets["web"].keys); n != 1 {
		t.Errorf("%d keys after five days off, want the new one alone", n)
	}
}
