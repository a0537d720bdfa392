package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"
)

// answer is where a Conn stands with the connector's answer to the gateway.
type answer int

const (
	answerPending answer = iota // nothing answered, nothing read or written
	answerOK                    // OK sent: Serve took the session
	answerClosed                // closed by Serve before any byte: handle refuses
	answerDone                  // refused, or the OK failed
)

// Conn is the connector's end of one session's stream: a net.Conn that
// reports the original client's handshake (ConnectionState), as the
// gateway saw it, so the proxy can identify the certificate again.
//
// The connector answers the gateway when Serve first reads or writes the
// Conn, not before: until then Serve may still refuse the session (the
// proxy identifies the client's certificate against its own CAs and CRLs,
// and admits it within its listener's limits, before it reads a byte).
// A Serve that returns without having read or written refuses the stream,
// its error's *RefusedError the reason the gateway hears, so the client
// gets its protocol's answer rather than a close.
type Conn struct {
	st     *yamux.Stream
	header *Header
	certs  []*x509.Certificate
	tenant string
	m      *metrics
	// toBackend and toGateway count the payload bytes.
	toBackend, toGateway prometheus.Counter
	closed               sync.Once
	done                 func()

	ok    atomic.Bool // answered OK: the fast path of Read and Write
	amu   sync.Mutex
	state answer
	err   error // the OK's write error
	onOK  func()
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

// accept answers OK before the first byte either way.
func (c *Conn) accept() error {
	if c.ok.Load() {
		return nil
	}
	c.amu.Lock()
	defer c.amu.Unlock()
	switch c.state {
	case answerPending:
		if err := writeStatus(c.st, StatusOK, ""); err != nil {
			c.state, c.err = answerDone, err
			c.m.stream(c.tenant, "error")
			return err
		}
		c.state = answerOK
		c.ok.Store(true)
		if c.onOK != nil {
			c.onOK()
		}
		return nil
	case answerOK:
		return nil
	case answerClosed:
		return net.ErrClosed
	}
	if c.err != nil {
		return c.err
	}
	return net.ErrClosed
}

// refuse answers the refusal if Serve neither read nor wrote; it reports
// whether it did. busy: for lack of room (StatusBusy).
func (c *Conn) refuse(reason string, busy bool) bool {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.state != answerPending && c.state != answerClosed {
		return false
	}
	c.state = answerDone
	status := StatusRefused
	if busy {
		status = StatusBusy
	}
	_ = writeStatus(c.st, status, reason)
	return true
}

func (c *Conn) Read(b []byte) (int, error) {
	if err := c.accept(); err != nil {
		return 0, err
	}
	n, err := c.st.Read(b)
	c.toBackend.Add(float64(n))
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	if err := c.accept(); err != nil {
		return 0, err
	}
	n, err := c.st.Write(b)
	c.toGateway.Add(float64(n))
	return n, err
}

// CloseWrite ends the stream towards the gateway; reads go on.
func (c *Conn) CloseWrite() error {
	if err := c.accept(); err != nil {
		return err
	}
	return c.st.Close()
}

// Close ends the stream. Before any byte it only marks the Conn closed:
// the connector answers the refusal, with Serve's reason, and closes.
func (c *Conn) Close() error {
	if !c.ok.Load() {
		c.amu.Lock()
		if c.state == answerPending {
			c.state = answerClosed
			c.amu.Unlock()
			return nil
		}
		c.amu.Unlock()
	}
	return c.end()
}

// end closes the stream, once answered.
func (c *Conn) end() error {
	err := c.st.Close()
	c.closed.Do(c.done)
	return err
}

// refusalReason is what the gateway hears of Serve's error, and whether
// the refusal is for lack of room.
func refusalReason(err error) (string, bool) {
	var re *RefusedError
	if errors.As(err, &re) && re.Reason != "" {
		return re.Reason, re.Busy
	}
	return "the connector ended the session before serving it", false
}

func (c *Conn) LocalAddr() net.Addr                { return c.st.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.st.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

var _ net.Conn = (*Conn)(nil)
