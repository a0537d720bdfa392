package admin

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Entry is one line of the audit log: one admin request, allowed or not.
type Entry struct {
	Time        time.Time      `json:"time"`
	Transport   string         `json:"transport"`
	Principal   string         `json:"principal"`
	UID         *uint32        `json:"uid,omitempty"`
	User        string         `json:"user,omitempty"`
	Subject     string         `json:"subject,omitempty"`
	Fingerprint string         `json:"fingerprint_sha256,omitempty"`
	Role        string         `json:"role"`  // the grant that allowed it; refused: the strongest held, or none
	Scope       string         `json:"scope"` // of that grant
	Action      Action         `json:"action"`
	Target      string         `json:"target"` // the scope the action was asked for
	Args        map[string]any `json:"args,omitempty"`
	Result      string         `json:"result"` // ok, refused or error
	Reason      string         `json:"reason,omitempty"`
}

// Audit is the append-only audit log: one JSON object per line, each
// written with one write(2) on a file opened O_APPEND, so lines of
// concurrent requests never interleave and nothing already written is
// rewritten.
type Audit struct {
	mu sync.Mutex
	f  *os.File
}

// OpenAudit opens (or creates, mode 0600) the audit log at path for
// appending. A file that others may read or write is made 0600.
func OpenAudit(path string) (*Audit, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("audit log %s: not a regular file", path)
	} else if fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, fmt.Errorf("audit log: %w", err)
		}
	}
	return &Audit{f: f}, nil
}

// Record appends e.
func (a *Audit) Record(e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(b); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// Close closes the file.
func (a *Audit) Close() error { return a.f.Close() }

// NewEntry starts the audit entry of p asking for action at target.
func NewEntry(p Principal, action Action, target string, args map[string]any) Entry {
	return Entry{Time: time.Now().UTC(), Transport: p.Transport, Principal: p.Name(), UID: p.UID, User: p.User,
		Subject: p.Subject, Fingerprint: p.Fingerprint, Action: action, Target: target, Args: args, Role: "none"}
}
