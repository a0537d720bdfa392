package accesslog

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Handler writes the same JSON lines as slog.NewJSONHandler(w, nil), but
// encodes the attribute kinds the access log uses (strings, integers,
// floats, booleans, durations, times) itself: the JSON handler formats
// every float through encoding/json's reflection, and the request line has
// one. A record with any other kind, a group or an empty key is written by
// the JSON handler, whole, so the output never differs.
type Handler struct {
	w     io.Writer
	json  slog.Handler // the fallback, with the same attributes
	pre   []byte       // the WithAttrs attributes, encoded: `,"k":v` each
	plain bool         // pre holds every attribute (no group, none needed the fallback)
	mu    *sync.Mutex  // one line at a time to w, shared with the handlers derived
}

var _ slog.Handler = (*Handler)(nil)

// NewHandler returns a Handler writing to w, one Write per line.
func NewHandler(w io.Writer) *Handler {
	return &Handler{w: w, json: slog.NewJSONHandler(w, nil), plain: true, mu: new(sync.Mutex)}
}

// Enabled implements slog.Handler: Info and above, as the JSON handler's
// default.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &Handler{w: h.w, json: h.json.WithAttrs(attrs), pre: h.pre, plain: h.plain, mu: h.mu}
	if !n.plain {
		return n
	}
	pre := append([]byte(nil), h.pre...)
	for _, a := range attrs {
		var ok bool
		if pre, ok = appendAttr(pre, a); !ok {
			n.plain = false
			return n
		}
	}
	n.pre = pre
	return n
}

// WithGroup implements slog.Handler: groups are left to the JSON handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &Handler{w: h.w, json: h.json.WithGroup(name), plain: false, mu: h.mu}
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if !h.plain {
		return h.json.Handle(ctx, r)
	}
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	b := append((*bp)[:0], '{')
	if !r.Time.IsZero() {
		t := r.Time.Round(0)
		if y := t.Year(); y < 0 || y >= 10000 {
			return h.json.Handle(ctx, r)
		}
		b = append(b, `"time":"`...)
		b = t.AppendFormat(b, time.RFC3339Nano)
		b = append(b, `",`...)
	}
	b = append(b, `"level":`...)
	b = appendString(b, r.Level.String())
	b = append(b, `,"msg":`...)
	b = appendString(b, r.Message)
	b = append(b, h.pre...)
	ok := true
	r.Attrs(func(a slog.Attr) bool {
		b, ok = appendAttr(b, a)
		return ok
	})
	if !ok {
		return h.json.Handle(ctx, r)
	}
	b = append(b, "}\n"...)
	*bp = b
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.w.Write(b)
	return err
}

// appendAttr appends `,"key":value`; false when the JSON handler must
// write it (another kind, a group, an empty key, a float JSON cannot hold).
func appendAttr(b []byte, a slog.Attr) ([]byte, bool) {
	if a.Key == "" {
		return b, false
	}
	b = append(b, ',')
	b = appendString(b, a.Key)
	b = append(b, ':')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		b = appendString(b, v.String())
	case slog.KindInt64:
		b = strconv.AppendInt(b, v.Int64(), 10)
	case slog.KindUint64:
		b = strconv.AppendUint(b, v.Uint64(), 10)
	case slog.KindBool:
		b = strconv.AppendBool(b, v.Bool())
	case slog.KindDuration:
		b = strconv.AppendInt(b, int64(v.Duration()), 10)
	case slog.KindFloat64:
		return appendFloat(b, v.Float64())
	default:
		return b, false
	}
	return b, true
}

// appendFloat formats f as encoding/json does.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, false
	}
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		n := len(b)
		b = strconv.AppendFloat(b, f, 'e', -1, 64)
		// clean up e-09 to e-9, as encoding/json does
		if m := len(b); m-n >= 4 && b[m-4] == 'e' && b[m-3] == '-' && b[m-2] == '0' {
			b[m-2] = b[m-1]
			b = b[:m-1]
		}
		return b, true
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64), true
}

const hex = "0123456789abcdef"

// appendString appends s quoted as the JSON handler quotes it: '"', '\\'
// and control characters escaped, invalid UTF-8 as \ufffd, U+2028 and
// U+2029 escaped, nothing else (no HTML escaping).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
