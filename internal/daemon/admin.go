package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// serveAdmin serves the admin API (adminMux) on a unix socket until ctx
// ends. The socket is bound in a directory of its own (0700) and chmod
// there before it is renamed into place, so it is never reachable with
// wider permissions than meant, whatever the umask: 0600 (root and the
// daemon's user only) unless a grant of access names a user other than
// root or a group, then 0666. Either way every request is authorised by
// its peer's credentials (SO_PEERCRED), so loosened permissions open
// nothing.
func (d *Daemon) serveAdmin(ctx context.Context, path string, open bool) error {
	dirMode, mode := os.FileMode(0o700), os.FileMode(0o600)
	if open {
		dirMode, mode = 0o755, 0o666
	}
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
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
	ln, err := listenPrivate(path, mode)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	srv := &http.Server{Handler: d.adminMux(), ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*credConn); ok {
				return withCred(ctx, pc.cred)
			}
			return ctx
		}}
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

// listenPrivate binds a unix socket at path with mode without a moment of
// wider permissions: bound in a fresh 0700 directory beside path,
// chmod, then renamed into place.
func listenPrivate(path string, mode os.FileMode) (*net.UnixListener, error) {
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
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// peerListener accepts connections with the peer's credentials, which
// authorise each request; a connection whose credentials cannot be read
// is closed and logged (at most once a minute).
type peerListener struct {
	*net.UnixListener
	log *slog.Logger

	mu     sync.Mutex
	logged time.Time
}

// credConn is a unix connection and its peer's credentials.
type credConn struct {
	*net.UnixConn
	cred peerCred
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerOf(c)
		if err == nil {
			return &credConn{UnixConn: c, cred: cred}, nil
		}
		c.Close()
		l.mu.Lock()
		quiet := time.Since(l.logged) < time.Minute
		if !quiet {
			l.logged = time.Now()
		}
		l.mu.Unlock()
		if !quiet {
			l.log.Warn("admin socket: connection refused: peer credentials unreadable", "err", err)
		}
	}
}

func peerOf(c *net.UnixConn) (peerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return peerCred{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return peerCred{}, err
	}
	if cerr != nil {
		return peerCred{}, cerr
	}
	return peerCred{uid: cred.Uid, gid: cred.Gid, pid: cred.Pid}, nil
}
