package tunnel

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"
)

// streamWindow is each stream's receive window: a bulk transfer fills its
// own window and waits, and a terminal session on the same tunnel goes on.
const streamWindow = 256 << 10

// yamuxConfig is both ends' multiplexer configuration.
func yamuxConfig(keepalive, timeout time.Duration, log *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 128
	c.EnableKeepAlive = true
	c.KeepAliveInterval = keepalive
	c.ConnectionWriteTimeout = timeout
	c.MaxStreamWindowSize = streamWindow
	// Never close the whole session because one stream's open is not
	// acknowledged in time: every other stream of the tunnel would go
	// with it. The gateway bounds each open itself (statusTimeout) and
	// closes only that stream; a dead tunnel is found by the keepalive.
	c.StreamOpenTimeout = 0
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger sends yamux's own lines to the component's logger at debug:
// the tunnel's decisions are logged by this package.
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any) { y.l.Debug(strings.TrimSpace(fmt.Sprint(v...))) }
func (y yamuxLogger) Printf(format string, v ...any) {
	y.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (y yamuxLogger) Println(v ...any) { y.l.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }

func fingerprint(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return certs.FingerprintSHA256(cs.PeerCertificates[0])
}

// retryBuffer bounds what the gateway keeps of a client's bytes until the
// connector answers: enough for a request head and a small body, sent
// again on another tunnel if the first one's connector took none of it.
const retryBuffer = 64 << 10

// Stream is the gateway's end of one session's stream. Its first Read
// waits for the connector's answer: a refusal is a *RefusedError.
//
// Until that answer the stream keeps what is written to it (up to
// retryBuffer). If the connector's multiplexer resets the stream before
// answering, which it does only to a stream its connector never accepted
// (it is draining after a GoAway that crossed the stream's opening, or
// its accept backlog is full), the stream is opened once more on another
// tunnel of the tenant and the kept bytes are written again: no byte of
// them reached a backend, so nothing runs twice. A stream whose tunnel is
// lost before the answer is not sent again: the connector may have taken
// it, and its answer be lost with the tunnel.
type Stream struct {
	g      *Gateway
	h      *Header
	m      *metrics
	tenant string
	// toConnector and toClient count the payload bytes.
	toConnector, toClient prometheus.Counter
	once                  sync.Once
	status                error

	mu         sync.Mutex // the fields below, and Write before acceptance
	st         *yamux.Stream
	br         *bufio.Reader
	t          *gwTunnel
	released   bool // t's slot given back
	closed     bool
	closeWrite bool
	kept       []byte
	overflow   bool
	accepted   atomic.Bool
}

func newStream(g *Gateway, h *Header, st *yamux.Stream, t *gwTunnel) *Stream {
	return &Stream{g: g, h: h, m: g.m, tenant: h.Tenant, st: st, br: bufio.NewReaderSize(st, 4096), t: t,
		toConnector: g.m.byteCounter(h.Tenant, "to_connector"), toClient: g.m.byteCounter(h.Tenant, "to_client")}
}

// statusTimeout bounds the wait for a connector's answer: it reads the
// header within headerTimeout or refuses.
const statusTimeout = headerTimeout + 5*time.Second

// Accepted waits for the connector's answer: nil when it serves the stream.
func (s *Stream) Accepted() error {
	s.once.Do(func() {
		s.status = s.readStatus()
		if errors.Is(s.status, yamux.ErrConnectionReset) {
			s.status = s.retry(nil)
		}
		// A connector refused for lack of room, before reading a byte:
		// try the tenant's other connectors, each once, within bounds.
		var busy []string
		for re := (*RefusedError)(nil); errors.As(s.status, &re) && re.Busy && len(busy) < maxBusyTries; {
			s.mu.Lock()
			gone := s.overflow || s.closed // too much to send again, or no client
			s.mu.Unlock()
			if gone {
				break
			}
			busy = append(busy, s.t.fp)
			err := s.retry(busy)
			if errors.Is(err, ErrNoTunnel) || errors.Is(err, ErrTunnelsFull) || errors.Is(err, ErrTenantLimit) {
				break // no other connector: the client hears the refusal
			}
			s.status = err
		}
		if s.status == nil {
			s.mu.Lock()
			s.kept, s.overflow = nil, false
			s.accepted.Store(true)
			s.mu.Unlock()
			return
		}
		if _, ok := s.status.(*RefusedError); ok {
			s.m.stream(s.tenant, "refused")
		}
	})
	return s.status
}

func (s *Stream) readStatus() error {
	_ = s.st.SetReadDeadline(time.Now().Add(statusTimeout))
	err := readStatus(s.br)
	_ = s.st.SetReadDeadline(time.Time{})
	return err
}

// maxBusyTries bounds the connectors a stream is offered to after the
// first one answered that it has no room.
const maxBusyTries = 4

// retry opens the stream once more on a tunnel of the tenant, not one of
// the connectors in except, after the connector's multiplexer reset it
// unread or its connector refused it for lack of room before reading a
// byte, and writes the kept bytes.
func (s *Stream) retry(except []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.overflow {
		return fmt.Errorf("stream reset before the connector's answer, with more than %d bytes of the client's sent: not sent again: %w", retryBuffer, yamux.ErrConnectionReset)
	}
	if s.closed {
		return fmt.Errorf("stream reset before the connector's answer: %w", yamux.ErrConnectionReset)
	}
	s.st.Close()
	s.releaseLocked()
	st, t, err := s.g.open(s.h, except)
	if err != nil {
		if except != nil {
			return err
		}
		return fmt.Errorf("stream reset before the connector's answer, and no other tunnel: %w", err)
	}
	s.m.stream(s.tenant, "retried")
	why := "stream reset unread by a draining or full connector tunnel: sent on another"
	if except != nil {
		why = "stream refused by a connector with no room: sent to another connector"
	}
	s.g.log.Info(why, "tenant", s.tenant, "listener", s.h.Listener, "from_tunnel", s.t.id, "to_tunnel", t.id)
	s.st, s.br, s.t, s.released = st, bufio.NewReaderSize(st, 4096), t, false
	if len(s.kept) > 0 {
		_ = st.SetWriteDeadline(time.Now().Add(s.g.cfg.KeepaliveTimeout))
		_, err = st.Write(s.kept)
		_ = st.SetWriteDeadline(time.Time{})
		if err != nil {
			return fmt.Errorf("stream sent again: %w", err)
		}
	}
	if s.closeWrite {
		_ = st.Close()
	}
	return s.readStatus()
}

func (s *Stream) Read(b []byte) (int, error) {
	if err := s.Accepted(); err != nil {
		return 0, err
	}
	n, err := s.br.Read(b)
	s.toClient.Add(float64(n))
	return n, err
}

func (s *Stream) Write(b []byte) (int, error) {
	if s.accepted.Load() {
		n, err := s.st.Write(b)
		s.toConnector.Add(float64(n))
		return n, err
	}
	s.mu.Lock()
	if len(s.kept)+len(b) <= retryBuffer {
		s.kept = append(s.kept, b...)
	} else {
		s.overflow = true
	}
	st := s.st
	s.mu.Unlock()
	n, err := st.Write(b)
	if err != nil && !s.accepted.Load() {
		// Reset unread, or closed by a connector that refused it for lack
		// of room: Accepted sends the kept bytes again on the next tunnel,
		// or fails.
		s.mu.Lock()
		kept := !s.overflow
		s.mu.Unlock()
		if kept {
			return len(b), nil
		}
	}
	s.toConnector.Add(float64(n))
	return n, err
}

// CloseWrite ends the stream in the gateway's direction (a FIN); reads go on.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	s.closeWrite = true
	st := s.st
	s.mu.Unlock()
	return st.Close()
}

// Close ends the stream and gives its slot back.
func (s *Stream) Close() error {
	s.mu.Lock()
	s.closed = true
	st := s.st
	s.releaseLocked()
	s.mu.Unlock()
	return st.Close()
}

func (s *Stream) releaseLocked() {
	if !s.released {
		s.released = true
		s.g.release(s.t)
	}
}

func (s *Stream) current() *yamux.Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func (s *Stream) LocalAddr() net.Addr                { return s.current().LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr               { return s.current().RemoteAddr() }
func (s *Stream) SetDeadline(t time.Time) error      { return s.current().SetDeadline(t) }
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.current().SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.current().SetWriteDeadline(t) }

var _ net.Conn = (*Stream)(nil)
