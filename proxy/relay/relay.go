package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Accept-loop backoff bounds for temporary errors such as EMFILE.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// AcceptConfig configures Accept.
type AcceptConfig struct {
	// Admit decides, in the accept loop and in accept order, what becomes
	// of a new connection: it returns the function that serves it (run in
	// its own goroutine), or nil when it refused the connection, which
	// Accept then closes. Caps and budgets live in Admit, so a connection
	// over them is closed at once rather than left queued: the client
	// learns quickly and the backlog never hides a flood.
	Admit func(net.Conn) (serve func())
	// AcceptFailed, when set, hears of every temporary accept error (for
	// example EMFILE) and the backoff before the next try. A client can
	// cause these at will, so it must not log each one.
	AcceptFailed func(err error, backoff time.Duration)
}

// Accept runs the accept loop of ln until ln is closed, running the serve
// function Admit returns for each connection in its own goroutine.
// Temporary accept errors back off exponentially instead of spinning; the
// backoff is only forgotten after a second without errors, so a loop
// that fails between successes does not spin either. Accept returns nil
// once ln is closed and every serve function has returned.
func Accept(ln net.Listener, cfg AcceptConfig) error {
	var (
		wg        sync.WaitGroup
		backoff   time.Duration
		lastError time.Time
	)
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(backoff*2, minBackoff), maxBackoff)
				lastError = time.Now()
				if cfg.AcceptFailed != nil {
					cfg.AcceptFailed(err, backoff)
				}
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		if backoff > 0 && time.Since(lastError) > maxBackoff {
			backoff = 0
		}
		serve := cfg.Admit(c)
		if serve == nil {
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve()
		}()
	}
}

// isTemporary reports accept errors that go away by themselves (descriptor
// exhaustion, aborted handshakes in the kernel queue).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Handshake runs the server side of a TLS handshake bounded by timeout, and
// clears the deadline afterwards.
func Handshake(ctx context.Context, c *tls.Conn, timeout time.Duration) error {
	if timeout > 0 {
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return fmt.Errorf("set handshake deadline: %w", err)
		}
		ctx2, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		ctx = ctx2
	}
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear handshake deadline: %w", err)
	}
	return nil
}

// Counter receives byte counts as they cross a connection.
type Counter interface {
	// Count adds n bytes read from (in) or written to (!in) the peer.
	Count(in bool, n int)
}

// CountingConn counts the bytes read from and written to the wrapped
// connection and runs OnClose exactly once when it is first closed.
type CountingConn struct {
	net.Conn
	counter atomic.Pointer[counterBox]
	closed  sync.Once
	onClose func()
}

type counterBox struct{ c Counter }

// NewCountingConn wraps c; onClose may be nil.
func NewCountingConn(c net.Conn, counter Counter, onClose func()) *CountingConn {
	cc := &CountingConn{Conn: c, onClose: onClose}
	cc.SetCounter(counter)
	return cc
}

// SetCounter redirects future counts, for example once the peer's tenant is
// known.
func (c *CountingConn) SetCounter(counter Counter) {
	c.counter.Store(&counterBox{counter})
}

func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if b := c.counter.Load(); b.c != nil {
			b.c.Count(true, n)
		}
	}
	return n, err
}

func (c *CountingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		if b := c.counter.Load(); b.c != nil {
			b.c.Count(false, n)
		}
	}
	return n, err
}

// Close closes the connection and runs the close hook once.
func (c *CountingConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// CloseWrite half-closes the wrapped connection when it supports it.
func (c *CountingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Pipe copies a→b and b→a until both directions end, half-closing the
// receiving side when a sender finishes so protocols that signal the end of a
// request with a FIN keep working. It closes both connections before it
// returns the byte counts (a→b, b→a) and the first error that was not a
// plain end of stream.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	return PipeTimed(a, b, nil)
}

// PipeTimed is Pipe that touches t on every read either way, so t's idle
// timeout sees the traffic; t may be nil. t's end function should close a
// and b, which ends the copy.
func PipeTimed(a, b net.Conn, t *Timer) (aToB, bToA int64, err error) {
	// One direction runs in the caller's goroutine, whose stack exists
	// anyway: an idle session costs one goroutine fewer.
	var errAB, errBA error
	done := make(chan struct{})
	go func() { defer close(done); aToB, errAB = halfCopy(b, a, t) }()
	bToA, errBA = halfCopy(a, b, t)
	<-done
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(quiet(errAB), quiet(errBA))
}

// halfCopy copies src to dst, then half-closes dst; if dst cannot be half
// closed, or the copy failed, both ends are closed so the other direction
// ends too.
func halfCopy(dst, src net.Conn, t *Timer) (int64, error) {
	var n int64
	var err error
	if rc := socketOf(src); rc != nil {
		n, err = copySocket(dst, rc, t)
	} else {
		n, err = copyConn(dst, src, t)
	}
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return n, nil
		}
	}
	dst.Close()
	src.Close()
	return n, err
}

// copyConn copies from any connection (a TLS one) into a ReadBuffer, so
// a direction that waits for its peer holds only a small buffer (TLS
// keeps its own record buffer below it anyway).
func copyConn(dst, src net.Conn, t *Timer) (written int64, err error) {
	var rb ReadBuffer
	defer rb.Release()
	for {
		buf := rb.Next()
		n, rerr := src.Read(buf)
		if n > 0 {
			if err := write(dst, buf[:n], &written, t); err != nil {
				return written, err
			}
		}
		rb.Done(n)
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// copySocket copies from a plain TCP socket without holding a buffer
// while it waits: it waits for the socket to be readable, and only then
// takes a pooled buffer, reads what is there in one system call (as many
// as a read of the connection would make), writes it on and gives the
// buffer back. A backend that sends nothing costs its session no buffer.
func copySocket(dst net.Conn, src syscall.RawConn, t *Timer) (written int64, err error) {
	for {
		var buf []byte
		var n int
		var rerr error
		err := src.Read(func(fd uintptr) bool {
			buf = Buffers.Get()
			for {
				n, rerr = syscall.Read(int(fd), buf)
				if rerr != syscall.EINTR {
					break
				}
			}
			if rerr == syscall.EAGAIN {
				Buffers.Put(buf)
				return false // wait until readable, then call again
			}
			return true
		})
		if err != nil {
			return written, err
		}
		if rerr != nil {
			Buffers.Put(buf)
			return written, os.NewSyscallError("read", rerr)
		}
		if n == 0 {
			Buffers.Put(buf)
			return written, nil // end of stream
		}
		err = write(dst, buf[:n], &written, t)
		Buffers.Put(buf)
		if err != nil {
			return written, err
		}
	}
}

// write writes b to dst after a read that brought it, touching t.
func write(dst net.Conn, b []byte, written *int64, t *Timer) error {
	if t != nil {
		t.Touch()
	}
	w, err := dst.Write(b)
	*written += int64(w)
	if err == nil && w != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// socketOf returns the socket of a plain TCP connection (as Dialer and
// DialBackend make them), nil for anything else.
func socketOf(c net.Conn) syscall.RawConn {
	switch v := c.(type) {
	case *heldConn:
		return socketOf(v.Conn)
	case *net.TCPConn:
		rc, err := v.SyscallConn()
		if err != nil {
			return nil
		}
		return rc
	}
	return nil
}

// quiet drops the errors every relay ends with.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
