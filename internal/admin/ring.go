package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
)

// Ring keeps the last lines of the access log in memory, with the tenant
// and environment each belongs to, so that a viewer reads its own
// tenant's recent lines without the daemon re-reading log files (which
// may be journald's, rotated, or elsewhere).
type Ring struct {
	mu    sync.Mutex
	lines []ringLine
	next  int
	full  bool
}

type ringLine struct {
	tenant, env string
	json        []byte
}

// NewRing keeps the last n lines.
func NewRing(n int) *Ring { return &Ring{lines: make([]ringLine, n)} }

func (r *Ring) add(l ringLine) {
	r.mu.Lock()
	r.lines[r.next] = l
	r.next++
	if r.next == len(r.lines) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// Tail returns up to n of the newest lines that sees accepts (by tenant
// and environment; "" when the line names none), oldest first.
func (r *Ring) Tail(n int, sees func(tenant, env string) bool) []json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []json.RawMessage
	size := r.next
	if r.full {
		size = len(r.lines)
	}
	for i := 1; i <= size && len(out) < n; i++ {
		l := r.lines[(r.next-i+len(r.lines))%len(r.lines)]
		if sees(l.tenant, l.env) {
			out = append(out, json.RawMessage(l.json))
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Tee returns a handler that passes every record to next and keeps it,
// as one JSON object, in r.
func (r *Ring) Tee(next slog.Handler) slog.Handler {
	t := &tee{next: next, ring: r, buf: &lockedBuf{}}
	t.json = slog.NewJSONHandler(t.buf, nil)
	return t
}

type tee struct {
	next   slog.Handler
	ring   *Ring
	buf    *lockedBuf
	json   slog.Handler
	tenant string // from WithAttrs
	env    string
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) { return l.b.Write(p) }

// Enabled: the ring keeps info and above whatever next does (an access
// log that is discarded still has a tail).
func (t *tee) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || t.next.Enabled(ctx, l)
}

func (t *tee) Handle(ctx context.Context, rec slog.Record) error {
	var err error
	if t.next.Enabled(ctx, rec.Level) {
		err = t.next.Handle(ctx, rec)
	}
	if rec.Level < slog.LevelInfo {
		return err
	}
	tenant, env := t.tenant, t.env
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "tenant":
			tenant = a.Value.String()
		case "environment":
			env = a.Value.String()
		}
		return true
	})
	if tenant == "-" || tenant == "unknown" {
		tenant = ""
	}
	t.buf.mu.Lock()
	t.buf.b.Reset()
	_ = t.json.Handle(ctx, rec)
	line := bytes.TrimSuffix(bytes.Clone(t.buf.b.Bytes()), []byte("\n"))
	t.buf.mu.Unlock()
	t.ring.add(ringLine{tenant: tenant, env: env, json: line})
	return err
}

func (t *tee) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *t
	c.next = t.next.WithAttrs(attrs)
	c.json = t.json.WithAttrs(attrs)
	for _, a := range attrs {
		switch a.Key {
		case "tenant":
			c.tenant = a.Value.String()
		case "environment":
			c.env = a.Value.String()
		}
	}
	return &c
}

func (t *tee) WithGroup(name string) slog.Handler {
	c := *t
	c.next = t.next.WithGroup(name)
	c.json = t.json.WithGroup(name)
	return &c
}
