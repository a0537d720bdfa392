package announce

import (
	"context"
	"log/slog"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogAdapter hands GoBGP's log lines to the daemon's logger. GoBGP is
// chatty at info (every FSM step), so its info goes to debug; session
// changes the daemon cares about are logged by GoBGP at info as
// "Peer Up"/"Peer Down", kept at info.
type slogAdapter struct{ log *slog.Logger }

func (a *slogAdapter) emit(l slog.Level, msg string, f gobgplog.Fields) {
	if !a.log.Enabled(context.Background(), l) {
		return
	}
	attrs := make([]any, 0, 2*len(f))
	for k, v := range f {
		attrs = append(attrs, k, v)
	}
	a.log.Log(context.Background(), l, msg, attrs...)
}

func (a *slogAdapter) Panic(msg string, f gobgplog.Fields) {
	a.emit(slog.LevelError, msg, f)
	panic(msg)
}
func (a *slogAdapter) Fatal(msg string, f gobgplog.Fields) { a.emit(slog.LevelError, msg, f) }
func (a *slogAdapter) Error(msg string, f gobgplog.Fields) { a.emit(slog.LevelError, msg, f) }
func (a *slogAdapter) Warn(msg string, f gobgplog.Fields)  { a.emit(slog.LevelWarn, msg, f) }
func (a *slogAdapter) Info(msg string, f gobgplog.Fields) {
	l := slog.LevelDebug
	if msg == "Peer Up" || msg == "Peer Down" {
		l = slog.LevelInfo
	}
	a.emit(l, msg, f)
}
func (a *slogAdapter) Debug(msg string, f gobgplog.Fields) { a.emit(slog.LevelDebug-4, msg, f) }
func (a *slogAdapter) SetLevel(gobgplog.LogLevel)          {} // the daemon's logger decides
func (a *slogAdapter) GetLevel() gobgplog.LogLevel {
	if a.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
