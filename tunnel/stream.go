package tunnel

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
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
	c.StreamOpenTimeout = timeout + keepalive
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
	sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:])
}

// Stream is the gateway's end of one session's stream. Its first Read
// waits for the connector's answer: a refusal is a *RefusedError.
type Stream struct {
	st      *yamux.Stream
	br      *bufio.Reader
	tenant  string
	m       *metrics
	once    sync.Once
	status  error
	release sync.Once
	done    func()
}

func newStream(st *yamux.Stream, tenant string, m *metrics, done func()) *Stream {
	return &Stream{st: st, br: bufio.NewReaderSize(st, 4096), tenant: tenant, m: m, done: done}
}

// statusTimeout bounds the wait for a connector's answer: it reads the
// header within headerTimeout or refuses.
const statusTimeout = headerTimeout + 5*time.Second

// Accepted waits for the connector's answer: nil when it serves the stream.
func (s *Stream) Accepted() error {
	s.once.Do(func() {
		_ = s.st.SetReadDeadline(time.Now().Add(statusTimeout))
		s.status = readStatus(s.br)
		_ = s.st.SetReadDeadline(time.Time{})
		if s.status != nil {
			if _, ok := s.status.(*RefusedError); ok {
				s.m.stream(s.tenant, "refused")
			}
		}
	})
	return s.status
}

func (s *Stream) Read(b []byte) (int, error) {
	if err := s.Accepted(); err != nil {
		return 0, err
	}
	n, err := s.br.Read(b)
	s.m.bytes(s.tenant, "to_client", n)
	return n, err
}

func (s *Stream) Write(b []byte) (int, error) {
	n, err := s.st.Write(b)
	s.m.bytes(s.tenant, "to_connector", n)
	return n, err
}

// CloseWrite ends the stream in the gateway's direction (a FIN); reads go on.
func (s *Stream) CloseWrite() error { return s.st.Close() }

// Close ends the stream and gives its slot back.
func (s *Stream) Close() error {
	err := s.st.Close()
	s.release.Do(s.done)
	return err
}

func (s *Stream) LocalAddr() net.Addr                { return s.st.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr               { return s.st.RemoteAddr() }
func (s *Stream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

var _ net.Conn = (*Stream)(nil)

// Conn is the connector's end of one session's stream: a net.Conn that
// reports the original client's handshake (ConnectionState), as the
// gateway saw it, so the proxy can identify the certificate again.
type Conn struct {
	st     *yamux.Stream
	header *Header
	certs  []*x509.Certificate
	tenant string
	m      *metrics
	closed sync.Once
	done   func()
}

// Header is the stream's header.
func (c *Conn) Header() *Header { return c.header }

// ConnectionState is the original client's handshake: its certificates,
// the SNI and ALPN it negotiated with the gateway.
func (c *Conn) ConnectionState() tls.ConnectionState {
	return tls.ConnectionState{
		Version:            tls.VersionTLS13,
		HandshakeComplete:  true,
		ServerName:         c.header.ServerName,
		NegotiatedProtocol: c.header.ALPN,
		PeerCertificates:   c.certs,
	}
}

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.st.Read(b)
	c.m.bytes(c.tenant, "to_backend", n)
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.st.Write(b)
	c.m.bytes(c.tenant, "to_gateway", n)
	return n, err
}

// CloseWrite ends the stream towards the gateway; reads go on.
func (c *Conn) CloseWrite() error { return c.st.Close() }

func (c *Conn) Close() error {
	err := c.st.Close()
	c.closed.Do(c.done)
	return err
}

func (c *Conn) LocalAddr() net.Addr                { return c.st.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.st.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

var _ net.Conn = (*Conn)(nil)
