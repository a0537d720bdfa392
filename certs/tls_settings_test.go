package certs

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
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
	m.rotateTickets()
	if m.tickets["web"].keys[0] == first {
		t.Fatal("a 2h old key kept after the period became 1h")
	}
}
