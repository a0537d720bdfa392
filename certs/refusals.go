package certs

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"
	"slices"
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

// LogArgs are the refusal's result, reason and certificate as slog
// key-value pairs, for the line the listener writes beside its own
// listener and source. Every value is printable and bounded: the reason
// stands for the handshake's error, whose text carries the client's names
// as they came.
func (r Refusal) LogArgs() []any {
	args := []any{"result", string(r.Result)}
	for _, kv := range [][2]string{{"tenant", r.Tenant}, {"reason", r.Reason}, {"subject", r.Subject}, {"issuer", r.Issuer}, {"fingerprint_sha256", r.FingerprintSHA256}} {
		if kv[1] != "" {
			args = append(args, kv[0], kv[1])
		}
	}
	return args
}

// refusalRing holds the last RefusalsKept refusals, and the last refusal
// of each result besides: a stranger's RefusalsKept connections without a
// certificate push every other refusal out of the ring, but not out of
// last.
type refusalRing struct {
	mu   sync.Mutex
	buf  [RefusalsKept]Refusal
	next int // where the next one goes
	n    int // how many are held
	seq  uint64
	last map[Result]lastRefusal // at most one per Result: bounded
}

type lastRefusal struct {
	Refusal
	seq uint64 // the refusal's place in the sequence of all refusals
}

func (r *refusalRing) add(x Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = x
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
	r.seq++
	if r.last == nil {
		r.last = map[Result]lastRefusal{}
	}
	r.last[x.Result] = lastRefusal{Refusal: x, seq: r.seq}
}

// list returns the refusals held, newest first, then the last refusal of
// each result no longer among them, newest first.
func (r *refusalRing) list() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, 0, r.n+len(r.last))
	for i := 1; i <= r.n; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	var older []lastRefusal
	for _, l := range r.last {
		if l.seq <= r.seq-uint64(r.n) { // pushed out of the ring
			older = append(older, l)
		}
	}
	slices.SortFunc(older, func(a, b lastRefusal) int { return cmp.Compare(b.seq, a.seq) })
	for _, l := range older {
		out = append(out, l.Refusal)
	}
	return out
}

// Refusals returns the last RefusalsKept refused handshakes of every
// listener, newest first, followed by the last refusal of each result that
// is older than those, newest first.
func (m *Manager) Refusals() []Refusal { return m.refusals.list() }

// HandshakeFailed counts a failed handshake of the listener from source,
// remembers it among the Refusals unless the client closed before it sent
// a certificate, and returns it, classified, with the client certificate's
// names when it sent one, for the caller's log line. cs is the
// connection's state after the failure: its PeerCertificates are what the
// client sent. A client that sent a certificate and then closed, or did
// not prove it holds the key (a bad CertificateVerify), is refused with
// that certificate: with TLS 1.2, crypto/tls asks VerifyConnection only
// after the client's key exchange, so the certificate is judged here.
// Failures VerifyConnection refused are counted there already.
func (m *Manager) HandshakeFailed(listener string, source netip.AddrPort, cs tls.ConnectionState, err error) Refusal {
	if err == nil {
		return Refusal{}
	}
	var ae *AuthError
	if !errors.As(err, &ae) {
		if len(cs.PeerCertificates) == 0 {
			r := m.refusal(listener, source, classifyHandshakeError(err), "", err.Error(), nil)
			m.count(listener, "", r.Result)
			if r.Result != ResultClientClosed { // a client that left before it sent a certificate refused nothing
				m.refusals.add(r)
			}
			return r
		}
		ae = m.unproven(listener, cs.PeerCertificates, err)
	}
	return m.refused(listener, source, cs, ae)
}

// unproven classifies a handshake that failed after the client sent its
// certificate but not in VerifyConnection: the client closed, or its
// signature did not verify. A certificate the generation in force refuses
// is refused for that; one it accepts is refused as other, naming its
// tenant in the reason only, since the client did not prove to be it.
func (m *Manager) unproven(listener string, chain []*x509.Certificate, err error) *AuthError {
	what := err.Error()
	if classifyHandshakeError(err) == ResultClientClosed {
		what = "the client closed the connection (" + what + ")"
	}
	what += " after it sent its certificate, before it proved to hold the certificate's key"
	id, ae := m.authorizeOn(m.state.Load(), listener, chain)
	if ae != nil {
		ae.Detail += "; " + what
		return ae
	}
	return (&AuthError{Result: ResultOther, Detail: "certificate of tenant " + id.Tenant + ", but " + what}).withLeaf(chain)
}

// refused counts (unless VerifyConnection did) and remembers a refusal of
// a client certificate, and returns it.
func (m *Manager) refused(listener string, source netip.AddrPort, cs tls.ConnectionState, ae *AuthError) Refusal {
	leaf := ae.leaf
	if len(cs.PeerCertificates) > 0 {
		leaf = cs.PeerCertificates[0]
	}
	r := m.refusal(listener, source, ae.Result, ae.Tenant, ae.Detail, leaf)
	if !ae.counted {
		m.count(listener, r.Tenant, r.Result)
	}
	m.refusals.add(r)
	return r
}

// refusal makes a Refusal, every text in it printable and bounded.
func (m *Manager) refusal(listener string, source netip.AddrPort, res Result, tenant, reason string, leaf *x509.Certificate) Refusal {
	r := Refusal{Time: m.now().UTC(), Listener: listener, Source: source.String(), Result: res, Tenant: tenant, Reason: printable(reason)}
	if leaf != nil {
		r.Subject, r.Issuer, r.FingerprintSHA256 = printable(leaf.Subject.String()), printable(leaf.Issuer.String()), FingerprintSHA256(leaf)
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
