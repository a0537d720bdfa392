package certs

import (
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unicode"
)

// RefusalsKept is how many refused handshakes a Manager remembers for
// `gatehouse status`.
const RefusalsKept = 32

// Refusal is one refused handshake: what `gatehouse status` lists and the
// refusal log line says. The client only ever sees bad_certificate (a
// precise alert would tell a stranger which CAs are trusted); this is the
// admin's side of it. Names come from the client's certificate and are
// made printable and bounded.
type Refusal struct {
	Time              time.Time `json:"time"`
	Listener          string    `json:"listener"`
	Source            string    `json:"source"`
	Result            Result    `json:"result"`
	Tenant            string    `json:"tenant,omitempty"`
	Reason            string    `json:"reason"`
	Subject           string    `json:"subject,omitempty"`
	Issuer            string    `json:"issuer,omitempty"`
	FingerprintSHA256 string    `json:"fingerprint_sha256,omitempty"`
}

// LogArgs are the refusal's result and certificate as slog key-value
// pairs, for the line the listener writes beside its own listener, source
// and error.
func (r Refusal) LogArgs() []any {
	args := []any{"result", string(r.Result)}
	for _, kv := range [][2]string{{"tenant", r.Tenant}, {"subject", r.Subject}, {"issuer", r.Issuer}, {"fingerprint_sha256", r.FingerprintSHA256}} {
		if kv[1] != "" {
			args = append(args, kv[0], kv[1])
		}
	}
	return args
}

// refusalRing holds the last RefusalsKept refusals.
type refusalRing struct {
	mu   sync.Mutex
	buf  [RefusalsKept]Refusal
	next int // where the next one goes
	n    int // how many are held
}

func (r *refusalRing) add(x Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = x
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
}

// list returns the refusals held, newest first.
func (r *refusalRing) list() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out
}

// Refusals returns the last refused handshakes of every listener, newest
// first.
func (m *Manager) Refusals() []Refusal { return m.refusals.list() }

// HandshakeFailed counts a failed handshake of the listener from source,
// remembers it among the Refusals unless the client just closed, and
// returns it, classified, with the client certificate's names when it sent
// one, for the caller's log line. Failures VerifyConnection refused are
// counted there already.
func (m *Manager) HandshakeFailed(listener string, source netip.AddrPort, err error) Refusal {
	if err == nil {
		return Refusal{}
	}
	r := Refusal{Time: m.now().UTC(), Listener: listener, Source: source.String(), Result: ResultOf(err)}
	var ae *AuthError
	if errors.As(err, &ae) {
		r.Tenant, r.Reason = ae.Tenant, printable(ae.Detail)
		if c := ae.leaf; c != nil {
			r.Subject, r.Issuer, r.FingerprintSHA256 = printable(c.Subject.String()), printable(c.Issuer.String()), FingerprintSHA256(c)
		}
	} else {
		r.Reason = printable(err.Error())
	}
	if ae == nil || !ae.counted {
		m.count(listener, r.Tenant, r.Result)
	}
	if r.Result != ResultClientClosed { // a client that left refused nothing
		m.refusals.add(r)
	}
	return r
}

// withLeaf notes the client certificate an AuthError refused.
func (e *AuthError) withLeaf(chain []*x509.Certificate) *AuthError {
	if len(chain) > 0 {
		e.leaf = chain[0]
	}
	return e
}

// maxPrintable bounds a name or reason taken from a client's certificate.
const maxPrintable = 256

// printable makes text from a client certificate safe for a terminal and
// a log: control and other unprintable characters become '?', and it is
// cut at maxPrintable characters.
func printable(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == maxPrintable {
			b.WriteString("…")
			break
		}
		if !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}
