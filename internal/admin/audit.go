package admin

import (
	"encoding/json"
	"errors"
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
	Result      string         `json:"result"` // intent (an action about to run), ok, refused or error
	Reason      string         `json:"reason,omitempty"`
}

// Audit is the append-only audit log: one JSON object per line, each
// written with one write(2) on a file opened O_APPEND, so lines of
// concurrent requests never interleave and nothing already written is
// rewritten.
//
// Before each line the path is looked at again (one stat): when it no
// longer names the open file (logrotate renamed or removed it), the file
// at the path is opened, or created, and the line goes there. A path that
// cannot be opened then fails the write: the line is not put in the
// renamed file, where nobody looks for it.
//
// Granted reads (status, metrics, certificates, access log) are sampled:
// one line per principal and read each ReadAuditPeriod, carrying how many
// were answered since and not written (see ReadSampler). Refused and
// failed requests, and every action, are always written.
type Audit struct {
	mu    sync.Mutex
	path  string
	f     *os.File
	fi    os.FileInfo // of f, to tell when path names another file
	reads *ReadSampler
}

// ReadAuditPeriod is how often a principal's granted reads of one kind
// are written to the audit log.
const ReadAuditPeriod = 5 * time.Minute

// OpenAudit opens (or creates, mode 0600) the audit log at path for
// appending. A file that others may read or write is made 0600.
func OpenAudit(path string) (*Audit, error) {
	f, fi, err := openAuditFile(path)
	if err != nil {
		return nil, err
	}
	return &Audit{path: path, f: f, fi: fi, reads: NewReadSampler(ReadAuditPeriod)}, nil
}

func openAuditFile(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("audit log %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("audit log: %w", err)
		}
	}
	return f, fi, nil
}

// follow reopens the path when it no longer names the open file (a.mu
// held).
func (a *Audit) follow() error {
	if fi, err := os.Stat(a.path); err == nil && os.SameFile(fi, a.fi) {
		return nil
	}
	f, fi, err := openAuditFile(a.path)
	if err != nil {
		return fmt.Errorf("reopening after rotation: %w", err)
	}
	a.f.Close()
	a.f, a.fi = f, fi
	return nil
}

// Record appends e, unless it is a granted read the sampler counts for a
// later line.
func (a *Audit) Record(e Entry) error {
	if e.Result == "ok" && e.Action.Read() && !a.reads.Admit(&e) {
		return nil
	}
	return a.write(e)
}

// Commit writes e and syncs it to disk before returning: the intent line
// of an action, which must be on disk before the action runs.
func (a *Audit) Commit(e Entry) error {
	return a.writeSync(e, true)
}

func (a *Audit) write(e Entry) error { return a.writeSync(e, false) }

func (a *Audit) writeSync(e Entry, sync bool) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.follow(); err != nil {
		return err
	}
	fi, err := a.f.Stat()
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if _, err := a.f.Write(b); err != nil {
		// A full disk may take part of the line: cut it off, so that the
		// log stays whole lines (this process is its only writer).
		_ = a.f.Truncate(fi.Size())
		return fmt.Errorf("audit log: %w", err)
	}
	if sync {
		if err := a.f.Sync(); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
	}
	return nil
}

// Close writes the reads not yet written and closes the file.
func (a *Audit) Close() error {
	var errs []error
	for _, e := range a.reads.Flush() {
		errs = append(errs, a.write(e))
	}
	return errors.Join(append(errs, a.f.Close())...)
}

// NewEntry starts the audit entry of p asking for action at target.
func NewEntry(p Principal, action Action, target string, args map[string]any) Entry {
	return Entry{Time: time.Now().UTC(), Transport: p.Transport, Principal: p.Name(), UID: p.UID, User: p.User,
		Subject: p.Subject, Fingerprint: p.Fingerprint, Action: action, Target: target, Args: args, Role: "none"}
}
