package tunnel

import (
	"bufio"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// Version is the header's first byte; a connector refuses another.
const Version = 1

// MaxHeader bounds a header's JSON: a client chain of a few certificates
// fits many times over, and a gateway cannot make a connector buffer more.
const MaxHeader = 32 << 10

// maxChain bounds the certificates a header may carry.
const maxChain = 8

// Header starts every stream: who the original client is, as the gateway's
// handshake with it proved, and where it came in.
type Header struct {
	Tenant string `json:"tenant"`
	// Environment is the tenant's environment the client proved; empty
	// for a tenant without environments (the implicit "default").
	Environment       string         `json:"environment,omitempty"`
	FingerprintSHA256 string         `json:"fingerprint_sha256"`
	Source            netip.AddrPort `json:"source"`
	Listener          string         `json:"listener"`
	Protocol          string         `json:"protocol"`
	ServerName        string         `json:"server_name,omitempty"`
	ALPN              string         `json:"alpn,omitempty"`
	// Chain is the client's certificates as it sent them (DER), leaf
	// first, so the connector can identify the certificate again.
	Chain [][]byte `json:"chain"`
}

// Errors of the header and the stream's answer.
var (
	ErrHeader = errors.New("bad stream header")
)

// validate checks what every header must have.
func (h *Header) validate() error {
	switch {
	case h.Tenant == "" || h.Listener == "" || h.FingerprintSHA256 == "":
		return fmt.Errorf("%w: tenant, listener and fingerprint are required", ErrHeader)
	case !h.Source.IsValid():
		return fmt.Errorf("%w: no source", ErrHeader)
	case len(h.Chain) == 0 || len(h.Chain) > maxChain:
		return fmt.Errorf("%w: %d certificates (1..%d)", ErrHeader, len(h.Chain), maxChain)
	}
	for _, s := range []string{h.Tenant, h.Environment, h.Listener, h.Protocol, h.ServerName, h.ALPN, h.FingerprintSHA256} {
		if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%w: control characters in a name", ErrHeader)
		}
	}
	return nil
}

// Binding is the (tenant, environment) whose connectors' tunnels may
// carry the stream, as GatewayConfig.Identify names a connector's: the
// tenant alone for the implicit environment, tenant/environment else.
func (h *Header) Binding() string {
	if h.Environment == "" || h.Environment == "default" {
		return h.Tenant
	}
	return h.Tenant + "/" + h.Environment
}

// Certificates parses the chain.
func (h *Header) Certificates() ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(h.Chain))
	for i, der := range h.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrHeader, i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// WriteHeader writes h as one frame: the version, a 2-byte big-endian
// length and the JSON.
func WriteHeader(w io.Writer, h *Header) error {
	if err := h.validate(); err != nil {
		return err
	}
	body, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrHeader, err)
	}
	if len(body) > MaxHeader {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrHeader, len(body), MaxHeader)
	}
	buf := make([]byte, 3, 3+len(body))
	buf[0] = Version
	binary.BigEndian.PutUint16(buf[1:], uint16(len(body)))
	_, err = w.Write(append(buf, body...))
	return err
}

// ReadHeader reads one header frame, refusing another version, a frame
// over MaxHeader, unknown fields and a header without what validate
// requires. It reads nothing past the frame.
func ReadHeader(r io.Reader) (*Header, error) {
	var pre [3]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	if pre[0] != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrHeader, pre[0], Version)
	}
	n := int(binary.BigEndian.Uint16(pre[1:]))
	if n > MaxHeader {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrHeader, n, MaxHeader)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	var h Header
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the header", ErrHeader)
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return &h, nil
}

// Status is the connector's first answer on a stream.
type Status byte

// Statuses.
const (
	StatusOK      Status = 0
	StatusRefused Status = 1
	// StatusBusy refuses for lack of room (the connector's listener is
	// full): nothing of the stream was read, so the gateway may send it
	// to another of the tenant's connectors.
	StatusBusy Status = 2
)

// RefusedError is a stream the connector refused, with its reason: what
// the gateway hears. Err, on the connector's side only, is the cause its
// log names.
type RefusedError struct {
	Reason string
	Err    error
	// Busy: refused for lack of room, not for the session itself; the
	// gateway tries the stream on another connector first.
	Busy bool
}

func (e *RefusedError) Error() string {
	if e.Err != nil {
		return "connector refused the stream: " + e.Reason + ": " + e.Err.Error()
	}
	return "connector refused the stream: " + e.Reason
}

func (e *RefusedError) Unwrap() error { return e.Err }

// writeStatus answers a stream: OK, or refused with a reason of at most 255
// bytes.
func writeStatus(w io.Writer, s Status, reason string) error {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	if s == StatusOK {
		_, err := w.Write([]byte{byte(StatusOK)})
		return err
	}
	_, err := w.Write(append([]byte{byte(s), byte(len(reason))}, reason...))
	return err
}

// readStatus reads the answer writeStatus wrote; a refusal is a
// *RefusedError.
func readStatus(r *bufio.Reader) error {
	b, err := r.ReadByte()
	if err != nil {
		return err
	}
	switch Status(b) {
	case StatusOK:
		return nil
	case StatusRefused, StatusBusy:
		n, err := r.ReadByte()
		if err != nil {
			return err
		}
		reason := make([]byte, n)
		if _, err := io.ReadFull(r, reason); err != nil {
			return err
		}
		return &RefusedError{Reason: strings.ToValidUTF8(string(reason), "?"), Busy: Status(b) == StatusBusy}
	}
	return fmt.Errorf("%w: unknown status %d", ErrHeader, b)
}
