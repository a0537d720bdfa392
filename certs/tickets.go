package certs

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// keepTicketKeys is how many keys a listener keeps: the newest encrypts,
// all decrypt, so a ticket lives at most keepTicketKeys rotations. Keys
// older than keepTicketKeys periods are dropped too, so that this holds
// across a restart or downtime, when one rotation follows many periods.
const keepTicketKeys = 3

// ticketSet is one listener's session-ticket keys, newest first. The keys
// of a set in force do not change: a rotation makes a new set.
type ticketSet struct {
	path    string // empty: memory only
	keys    [][32]byte
	created []time.Time
	dirty   bool // differs from the file at path
}

// planTickets returns the ticket sets of p's listeners: each listener's
// set in force (loaded from the state directory or made new the first
// time), advanced to now under p's rotation. Listeners never share keys,
// so a ticket from one listener cannot resume on another. Nothing is
// written and no config changes: commitTickets does that once the
// generation they belong to is built. With tickets off, the sets are kept
// as they are, for when they are switched on again. Called with m.mu held.
func (m *Manager) planTickets(p *policy.Policy) (map[string]*ticketSet, error) {
	dir := m.stateDir
	if dir == "" {
		dir = p.StateDir
	}
	if dir != "" {
		dir = filepath.Join(dir, "tls-tickets")
	}
	if m.ticketDir != "" {
		dir = m.ticketDir
	}
	plan := map[string]*ticketSet{}
	for _, l := range p.Listeners {
		ts, ok := m.tickets[l.Name]
		// Keys from tls.ticket_keys are build's to read; the rotated ones
		// are kept aside, for when the file is dropped again.
		if p.TLS.SessionTicketsDisabled || p.TLS.TicketKeys != "" {
			if ok {
				plan[l.Name] = ts
			}
			continue
		}
		if !ok {
			ts = &ticketSet{}
			if dir != "" {
				ts.path = filepath.Join(dir, safeFileName(l.Name))
				if err := ts.load(); err != nil && !os.IsNotExist(err) {
					m.logger.Warn("session ticket keys unreadable, starting new ones", "listener", l.Name, "file", ts.path, "err", err)
					ts.keys, ts.created = nil, nil
				}
			}
		}
		// Keys kept while tickets were off or the daemon was down, or under
		// a longer period, may be due or too old already.
		next, err := m.advanced(l.Name, ts, m.now(), rotation(p))
		if err != nil {
			return nil, fmt.Errorf("listener %q: session ticket keys: %w", l.Name, err)
		}
		plan[l.Name] = next
	}
	return plan, nil
}

// commitTickets writes the planned sets that changed to their files. A
// failure refuses the generation; a file written before it holds keys
// that were never used, and is rewritten at the next rotation. Called with
// m.mu held.
func (m *Manager) commitTickets(plan map[string]*ticketSet) error {
	for name, ts := range plan {
		if err := ts.save(); err != nil {
			return fmt.Errorf("listener %q: session ticket keys: %w", name, err)
		}
	}
	return nil
}

// rotateTickets gives each listener whose newest key is older than the
// rotation period a new key.
func (m *Manager) rotateTickets() {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.state.Load()
	if st.policy == nil || st.policy.TLS.SessionTicketsDisabled || st.policy.TLS.TicketKeys != "" {
		return
	}
	now := m.now()
	for name, ts := range m.tickets {
		next, err := m.advanced(name, ts, now, rotation(st.policy))
		if err == nil {
			err = next.save()
		}
		if err != nil {
			m.logger.Error("session ticket key rotation failed", "listener", name, "err", err)
			continue
		}
		if next == ts {
			continue
		}
		m.tickets[name] = next
		if ls, ok := st.listeners[name]; ok {
			ls.config.SetSessionTicketKeys(next.keys)
		}
		m.logger.Info("session ticket key rotated", "listener", name, "keys", len(next.keys))
	}
}

// advanced returns ts as it is to be at now under the rotation period
// every: keys older than keepTicketKeys periods dropped, and a new key
// first when the newest is due or none is left. It returns ts itself when
// nothing changes, else a new set to be saved.
func (m *Manager) advanced(listener string, ts *ticketSet, now time.Time, every time.Duration) (*ticketSet, error) {
	next := &ticketSet{path: ts.path, dirty: ts.dirty}
	for i, c := range ts.created {
		if now.Sub(c) < keepTicketKeys*every {
			next.keys = append(next.keys, ts.keys[i])
			next.created = append(next.created, c)
		}
	}
	pruned := len(next.keys) < len(ts.keys)
	if len(next.keys) > 0 && !m.due(listener, next, now, every) {
		if !pruned {
			return ts, nil
		}
		next.dirty = true
		return next, nil
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	next.keys = append([][32]byte{k}, next.keys...)
	next.created = append([]time.Time{now}, next.created...)
	if len(next.keys) > keepTicketKeys {
		next.keys, next.created = next.keys[:keepTicketKeys], next.created[:keepTicketKeys]
	}
	next.dirty = true
	return next, nil
}

// due reports whether a listener's newest key is to be replaced: it is as
// old as the rotation period, or dated in the future (the clock was set
// back, or the file came from a machine whose clock ran ahead), an age that
// would never reach the period. The second is logged, being unusual.
func (m *Manager) due(listener string, ts *ticketSet, now time.Time, every time.Duration) bool {
	age := now.Sub(ts.created[0])
	if age < 0 {
		m.logger.Warn("session ticket key dated in the future, rotating it now",
			"listener", listener, "created", ts.created[0].UTC(), "now", now.UTC(), "file", ts.path)
		return true
	}
	return age >= every
}

// rotation is the policy's ticket-key rotation period.
func rotation(p *policy.Policy) time.Duration {
	if p.TLS.TicketRotation > 0 {
		return p.TLS.TicketRotation
	}
	return policy.DefaultTicketRotation
}

// save writes a changed set to its file, if it has one.
func (ts *ticketSet) save() error {
	if !ts.dirty || ts.path == "" {
		return nil
	}
	if err := writeTicketFile(ts.path, ts.keys, ts.created); err != nil {
		return err
	}
	ts.dirty = false
	return nil
}

// The file has one key a line: unix seconds of creation, space, 64 hex
// digits. A file another user owns is refused: keys planted by anyone else
// would let them forge tickets.
func (ts *ticketSet) load() error {
	f, err := os.Open(ts.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by uid %d, not by this process's %d", st.Uid, os.Geteuid())
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return fmt.Errorf("line %d: want \"<unix-time> <hex key>\"", n)
		}
		sec, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		b, err := hex.DecodeString(f[1])
		if err != nil || len(b) != 32 {
			return fmt.Errorf("line %d: key is not 32 bytes of hex", n)
		}
		ts.keys = append(ts.keys, [32]byte(b))
		ts.created = append(ts.created, time.Unix(sec, 0))
		if len(ts.keys) == keepTicketKeys {
			break
		}
	}
	return nil
}

func writeTicketFile(path string, keys [][32]byte, created []time.Time) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	var b strings.Builder
	for i, k := range keys {
		fmt.Fprintf(&b, "%d %s\n", created[i].Unix(), hex.EncodeToString(k[:]))
	}
	return atomicfile.Write(path, []byte(b.String()), 0o600)
}

// safeFileName keeps a listener name usable as a file name.
func safeFileName(s string) string {
	ok := s != "" && s != "." && s != ".."
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			ok = false
		}
	}
	if ok {
		return s
	}
	return "x-" + hex.EncodeToString([]byte(s))
}
