package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// serveAdmin answers `gatehouse status` and `gatehouse feed refresh` on a
// unix socket only root (or the daemon's own user) can use, until ctx ends.
// The socket is bound in a directory of its own (0700) and chmod 0600
// there before it is renamed into place, so it is never reachable with
// wider permissions, whatever the umask and the parent directory; and every
// connection's peer is checked (SO_PEERCRED), so loosened permissions do
// not open it either.
func (d *Daemon) serveAdmin(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	// A socket left by a killed daemon would make Listen fail, so a stale
	// one is removed; one that answers belongs to a running daemon.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: %w", path, ErrAdminSocketInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("admin socket: %w", err)
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d.Status())
	})
	// GET /ready: what /readyz answers, for `gatehouse status --ready`
	// (keepalived's track_script): on this socket only root or the
	// daemon's user can answer, where any local user could bind the
	// metrics port of a daemon that died.
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if why := d.NotReady(); len(why) > 0 {
			http.Error(w, "not ready: "+strings.Join(why, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	// POST /feeds/refresh?feed=NAME…: fetch now, wait, answer the outcome
	// of each (gatehouse feed refresh).
	mux.HandleFunc("POST /feeds/refresh", func(w http.ResponseWriter, r *http.Request) {
		out, err := d.RefreshFeeds(r.Context(), r.URL.Query()["feed"])
		switch {
		case errors.Is(err, rules.ErrUnknownFeed), errors.Is(err, ErrNoFeeds):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil && r.Context().Err() != nil:
			return // the client went away; the rounds complete without it
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err = srv.Serve(&peerListener{UnixListener: ln, log: d.log})
	os.Remove(path)
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin socket: %w", err)
	}
	return nil
}

// listenPrivate binds a unix socket at path with mode 0600 without a moment
// of wider permissions: bound in a fresh 0700 directory beside path,
// chmod, then renamed into place.
func listenPrivate(path string) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The name changes below; serveAdmin removes the socket itself.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// peerListener accepts connections from root and from the daemon's own
// user only, by the peer's credentials; others are closed and logged (at
// most once a minute).
type peerListener struct {
	*net.UnixListener
	log *slog.Logger

	mu     sync.Mutex
	logged time.Time
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, pid, err := peerOf(c)
		if err == nil && (uid == 0 || uid == uint32(os.Geteuid())) {
			return c, nil
		}
		c.Close()
		l.mu.Lock()
		quiet := time.Since(l.logged) < time.Minute
		if !quiet {
			l.logged = time.Now()
		}
		l.mu.Unlock()
		if !quiet {
			l.log.Warn("admin socket: connection refused: only root may use it", "uid", uid, "pid", pid, "err", err)
		}
	}
}

func peerOf(c *net.UnixConn) (uid uint32, pid int32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}
