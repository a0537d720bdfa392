package accesslog

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"testing"
	"time"
)

// FuzzHandlerMatchesJSON: the Handler writes byte for byte what
// slog.NewJSONHandler writes, for every value of the kinds it encodes
// itself and for those it leaves to the JSON handler.
func FuzzHandlerMatchesJSON(f *testing.F) {
	f.Add("request", "id", "0123abcd", int64(200), 0.123, true, int64(1500), "listener", "web", int64(0))
	f.Add("a\"b\\c\n\t\r\x01\x7f", "k\u2028", "\xff\xfe<>&\u2029é", int64(-1), 1e-7, false, int64(-5), "", "x", int64(1))
	f.Add("", "k", "", int64(math.MaxInt64), 1e21, false, int64(0), "p", "", int64(2))
	f.Add("m", "k", "v", int64(math.MinInt64), math.NaN(), true, int64(1), "p", "v", int64(3))
	f.Add("m", "k", "v", int64(0), 123456789.0001, true, int64(1), "p", "v", int64(4))
	f.Add("m", "k", "v", int64(0), math.Copysign(0, -1), true, int64(1), "p", "v", int64(5))
	f.Fuzz(func(t *testing.T, msg, key, s string, i int64, fl float64, bo bool, d int64, preKey, preVal string, variant int64) {
		ts := time.Date(2026, 12, 7, 17, 0, 0, int(d&0x3fffffff)%1e9, time.UTC)
		if variant%3 == 1 {
			ts = time.Unix(0, d).In(time.FixedZone("x", int(variant%7200)))
		}
		rec := func() slog.Record {
			r := slog.NewRecord(ts, slog.Level(variant%9-4), msg, 0)
			r.AddAttrs(slog.String(key, s), slog.Int64("n", i), slog.Float64("f", fl), slog.Bool("b", bo),
				slog.Duration("d", time.Duration(d)), slog.Uint64("u", uint64(i)))
			switch variant % 5 {
			case 2:
				r.AddAttrs(slog.Any("any", map[string]int{s: 1}))
			case 3:
				r.AddAttrs(slog.Group("g", slog.String(key, s)))
			case 4:
				r.AddAttrs(slog.Time("t", ts))
			}
			return r
		}
		var want, got bytes.Buffer
		var jh, fh slog.Handler = slog.NewJSONHandler(&want, nil), NewHandler(&got)
		if preKey != "" || variant%2 == 0 {
			jh = jh.WithAttrs([]slog.Attr{slog.String(preKey, preVal), slog.Float64("pf", fl)})
			fh = fh.WithAttrs([]slog.Attr{slog.String(preKey, preVal), slog.Float64("pf", fl)})
		}
		if variant%11 == 10 {
			jh, fh = jh.WithGroup("grp"), fh.WithGroup("grp")
		}
		errW := jh.Handle(context.Background(), rec())
		errG := fh.Handle(context.Background(), rec())
		if (errW == nil) != (errG == nil) || want.String() != got.String() {
			t.Fatalf("differs from slog's JSON handler:\nwant %q (%v)\ngot  %q (%v)", want.String(), errW, got.String(), errG)
		}
	})
}

// The request line the proxy writes: no allocation, no reflection.
func TestHandlerRequestLineNoAllocs(t *testing.T) {
	var out bytes.Buffer
	l := slog.New(NewHandler(&out)).With("log", "access")
	attrs := []slog.Attr{slog.String("id", "0123456789abcdef"), slog.String("listener", "web"),
		slog.Int("status", 200), slog.Int64("bytes_out", 1024), slog.Float64("duration_ms", 0.412)}
	ctx := context.Background()
	l.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
	if n := testing.AllocsPerRun(100, func() {
		out.Reset()
		l.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
	}); n != 0 {
		t.Errorf("%v allocations per line, want 0", n)
	}
}

func BenchmarkRequestLine(b *testing.B) {
	attrs := []slog.Attr{slog.String("id", "0123456789abcdef"), slog.String("listener", "web"), slog.String("tenant", "acme"),
		slog.String("fingerprint", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
		slog.String("source", "192.0.2.10:43512"), slog.String("proto", "HTTP/1.1"), slog.String("method", "GET"),
		slog.String("route", "/"), slog.Int("backend", 0), slog.Int("attempts", 1), slog.Int("status", 200),
		slog.Int64("bytes_in", 0), slog.Int64("bytes_out", 1024), slog.Float64("duration_ms", 0.412)}
	for _, c := range []struct {
		name string
		h    func(*bytes.Buffer) slog.Handler
	}{
		{"slog-json", func(w *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(w, nil) }},
		{"accesslog", func(w *bytes.Buffer) slog.Handler { return NewHandler(w) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var out bytes.Buffer
			l := slog.New(c.h(&out)).With("log", "access")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				out.Reset()
				l.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
			}
		})
	}
}
