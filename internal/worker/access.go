package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
)

// maxAccessLine bounds one access log line a worker writes; a longer one
// is dropped (and counted in the log), not buffered without end.
const maxAccessLine = 64 << 10

// AccessRelay is the io.Writer the workers' standard output (their access
// log, one JSON object a line) goes to: each line is logged again on the
// enforcer's access logger, so that the access log has one writer and
// whatever that logger tees (the admin API's tail) sees the workers'
// lines. The record's time is when the enforcer read it.
type AccessRelay struct {
	log  *slog.Logger
	warn *slog.Logger
	mu   sync.Mutex
	buf  []byte
	skip bool // inside a line too long to keep
}

// NewAccessRelay relays to access; problems go to logger.
func NewAccessRelay(access, logger *slog.Logger) *AccessRelay {
	return &AccessRelay{log: access, warn: logger}
}

func (a *AccessRelay) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if !a.skip {
				a.buf = append(a.buf, p...)
				if len(a.buf) > maxAccessLine {
					a.buf, a.skip = a.buf[:0], true
				}
			}
			break
		}
		if !a.skip {
			a.buf = append(a.buf, p[:i]...)
			if len(a.buf) <= maxAccessLine {
				a.relay(a.buf)
			} else {
				a.warn.Warn("a worker's access log line was too long: dropped", "component", "workers", "limit", maxAccessLine)
			}
		} else {
			a.warn.Warn("a worker's access log line was too long: dropped", "component", "workers", "limit", maxAccessLine)
		}
		a.buf, a.skip = a.buf[:0], false
		p = p[i+1:]
	}
	return n, nil
}

// relay logs one line's fields again, in their order, without the ones
// the enforcer's handler writes itself.
func (a *AccessRelay) relay(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		a.warn.Warn("a worker wrote a line that is not an access log record: dropped", "component", "workers")
		return
	}
	msg := "request"
	var attrs []slog.Attr
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return
		}
		k, _ := kt.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return
		}
		switch k {
		case "time", "level", "log":
			continue
		case "msg":
			if s, ok := v.(string); ok {
				msg = s
			}
			continue
		}
		if s, ok := v.(string); ok {
			attrs = append(attrs, slog.String(k, s))
		} else {
			attrs = append(attrs, slog.Any(k, v))
		}
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs...)
}
