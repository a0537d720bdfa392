package certs

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// state is one immutable generation of everything TLS needs. Handshakes read
// it through Manager.state; reloads build a new one and swap the pointer.
type state struct {
	policy    *policy.Policy
	listeners map[string]*listenerState
	tenants   []*tenantState
	pool      *x509.CertPool     // union of all tenants' roots: the only trust anchors
	inters    *x509.CertPool     // union of all tenants' intermediates, for chain building
	byCA      map[[32]byte][]int // SHA-256 of a root's DER → indexes into tenants
	files     map[string]fileSig

	verified    sync.Map     // SHA-256 of the presented chain → *verifiedEntry
	verifiedN   atomic.Int64 // entries stored in verified
	warnedStale sync.Map     // tenant id → struct{}: stale CRL already logged
	staleCount  atomic.Int32 // stale CRLs last seen by the watcher
}

type listenerState struct {
	name     string
	certs    []serverCert                // first is the default, then the extra certificates
	exact    map[string]*tls.Certificate // DNS SAN (lower case) → certificate
	wildcard map[string]*tls.Certificate // "example" for a "*.example" SAN → certificate
	config   *tls.Config                 // what GetConfigForClient hands out
}

// serverCert is one server certificate of a listener.
type serverCert struct {
	tls    *tls.Certificate // Leaf is always set
	file   string
	metric string // name label of gatehouse_cert_expiry_timestamp_seconds
}

type tenantState struct {
	id      string
	crlFile string
	roots   []*x509.Certificate // client_ca: self-signed, the tenant's trust anchors
	inters  []*x509.Certificate // intermediates: each chains to one of roots
	crls    []*crlState         // one per CA (root or intermediate) that publishes one
	match   *matcher
	envs    []envState // none: the implicit policy.DefaultEnvironment
}

// owns reports whether a verified chain, which ends at one of the
// tenant's roots, is the tenant's: with intermediates listed, only a leaf
// one of them issued is; without, any. A root shared with a tenant that
// lists intermediates is refused at load (checkSharedRoots), or the
// tenant without would own the other's leaves too.
func (t *tenantState) owns(ch []*x509.Certificate) bool {
	if len(t.inters) == 0 {
		return true
	}
	if len(ch) < 3 {
		return false // issued by the root itself
	}
	return slices.ContainsFunc(t.inters, func(c *x509.Certificate) bool { return sameCA(c, ch[1]) })
}

// checkSharedRoots refuses a root (the same name and key, whichever copy of
// the certificate) shared by a tenant that lists intermediates and one that
// does not: the second owns every chain to the root, the first's leaves
// included, and its identities alone would stand between the first's
// issuing CA and its name.
func checkSharedRoots(tenants []*tenantState) error {
	for i, a := range tenants {
		for _, b := range tenants[i+1:] {
			if (len(a.inters) == 0) == (len(b.inters) == 0) {
				continue
			}
			without, with := a, b
			if len(a.inters) > 0 {
				without, with = b, a
			}
			for _, r := range without.roots {
				if slices.ContainsFunc(with.roots, func(o *x509.Certificate) bool { return sameCA(r, o) }) {
					return fmt.Errorf("tenants %q and %q share the root %q; %q lists intermediates and %q does not, so %q would take every certificate %q's intermediates issue: list %q's intermediates too, or give it its own root: %w",
						without.id, with.id, r.Subject.String(), with.id, without.id, without.id, with.id, without.id, ErrSharedRoot)
				}
			}
		}
	}
	return nil
}

// crlFor returns the tenant's CRL from the CA issuer, or nil.
func (t *tenantState) crlFor(issuer *x509.Certificate) *crlState {
	for _, c := range t.crls {
		if c.issuedBy(issuer) {
			return c
		}
	}
	return nil
}

type crlState struct {
	list    *x509.RevocationList
	signer  *x509.Certificate // the root or intermediate of the tenant whose key signed it
	dps     []string          // the distribution point it is the CRL of (issuingDistributionPoint), or none
	revoked map[string]bool   // decimal serials on the CRL
}

// issuedBy reports whether the CRL speaks for certificates that issuer (a
// certificate of a verified chain) signed: same name and same key as the
// CRL's signer. The name alone would let a CA's CRL stand for another CA
// of the same name, say the new key of a rollover.
func (c *crlState) issuedBy(issuer *x509.Certificate) bool {
	return sameCA(issuer, c.signer)
}

// sameCA reports whether two CA certificates are the same authority: same
// name and same key, whichever copy of the certificate each is.
func sameCA(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubject, b.RawSubject) &&
		bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo)
}

// stale reports whether the CRL is past its nextUpdate.
func (c *crlState) stale(now time.Time) bool {
	return !c.list.NextUpdate.IsZero() && now.After(c.list.NextUpdate)
}

// loader reads the files of one generation and remembers their digests, so
// that the watcher can tell when any of them changed.
type loader struct {
	src   FileSource
	files map[string]fileSig
	now   time.Time // the manager's clock when the generation is built
}

// fileSig identifies a file's content: its digest, and the size and mtime
// seen before reading it, which let the watcher skip unchanged files
// without reading them.
type fileSig struct {
	sum   [32]byte
	size  int64
	mtime time.Time
}

func (ld *loader) read(path string) ([]byte, error) {
	// Stat before reading: if the file changes in between, the next poll
	// sees a new mtime and compares content again.
	fi, err := ld.src.Stat(path)
	if err != nil {
		return nil, err
	}
	b, err := ld.src.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ld.files[path] = fileSig{sum: sha256.Sum256(b), size: fi.Size(), mtime: fi.ModTime()}
	return b, nil
}

// build parses everything the policy names; tickets are the listeners'
// session-ticket keys. It touches nothing shared: on any error the caller
// keeps the old state.
func (m *Manager) build(p *policy.Policy, tickets map[string]*ticketSet) (*state, error) {
	ld := &loader{src: m.files, files: map[string]fileSig{}, now: m.now()}
	st := &state{
		policy:    p,
		listeners: map[string]*listenerState{},
		pool:      x509.NewCertPool(),
		inters:    x509.NewCertPool(),
		byCA:      map[[32]byte][]int{},
	}
	for _, t := range p.Tenants {
		for _, other := range st.tenants {
			if other.id == t.ID {
				return nil, fmt.Errorf("tenant %q: %w", t.ID, ErrDuplicate)
			}
		}
		ts, err := loadTenant(ld, t)
		if err != nil {
			return nil, fmt.Errorf("tenant %q: %w", t.ID, err)
		}
		idx := len(st.tenants)
		st.tenants = append(st.tenants, ts)
		for _, ca := range ts.roots {
			sum := sha256.Sum256(ca.Raw)
			if len(st.byCA[sum]) == 0 {
				st.pool.AddCert(ca)
			}
			st.byCA[sum] = append(st.byCA[sum], idx)
		}
		for _, ca := range ts.inters {
			st.inters.AddCert(ca) // a pool ignores a certificate it holds already
		}
	}
	if err := checkSharedRoots(st.tenants); err != nil {
		return nil, err
	}
	var shared [][]byte
	if p.TLS.TicketKeys != "" && !p.TLS.SessionTicketsDisabled {
		var err error
		if shared, err = loadTicketFile(ld, p.TLS.TicketKeys); err != nil {
			return nil, err
		}
	}
	for _, l := range p.Listeners {
		if _, dup := st.listeners[l.Name]; dup {
			return nil, fmt.Errorf("listener %q: %w", l.Name, ErrDuplicate)
		}
		ts := tickets[l.Name]
		if shared != nil {
			var err error
			if ts, err = ticketSetFromFile(shared, l.Name); err != nil {
				return nil, fmt.Errorf("listener %q: session ticket keys: %w", l.Name, err)
			}
		}
		ls, err := m.loadListener(ld, l, p.TLS, ts)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		st.listeners[l.Name] = ls
	}
	st.files = ld.files
	return st, nil
}

func (m *Manager) loadListener(ld *loader, l policy.Listener, tlsSettings policy.TLS, ts *ticketSet) (*listenerState, error) {
	if l.ServerCert == "" || l.ServerKey == "" {
		return nil, ErrNoServerCert
	}
	ls := &listenerState{name: l.Name}
	def, err := m.loadServerPair(ld, l.Name, "server cert", l.ServerCert, l.ServerKey)
	if err != nil {
		return nil, err
	}
	ls.certs = append(ls.certs, serverCert{tls: def, file: l.ServerCert, metric: l.Name})
	for i, ck := range l.ExtraCerts {
		what := fmt.Sprintf("extra cert %d", i+1)
		if ck.Cert == "" || ck.Key == "" {
			return nil, fmt.Errorf("%s: %w", what, ErrNoServerCert)
		}
		pair, err := m.loadServerPair(ld, l.Name, what, ck.Cert, ck.Key)
		if err != nil {
			return nil, err
		}
		names := pair.Leaf.DNSNames
		if len(names) == 0 {
			return nil, fmt.Errorf("%s %s: %w", what, ck.Cert, ErrNoDNSNames)
		}
		ls.certs = append(ls.certs, serverCert{tls: pair, file: ck.Cert, metric: l.Name + "/" + normalizeName(names[0])})
	}
	if err := ls.index(); err != nil {
		return nil, err
	}
	ls.config = m.innerConfig(ls, tlsSettings, ts)
	return ls, nil
}

// loadServerPair reads and parses one certificate and its key; what says
// which of the listener's certificates it is, for errors and logs.
func (m *Manager) loadServerPair(ld *loader, listener, what, certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := ld.read(certFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	keyPEM, err := ld.read(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key of %s: %w", what, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Never echo key material: crypto/tls errors do not contain it.
		return nil, fmt.Errorf("%s %s / key %s: %w", what, certFile, keyFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, certFile, err)
		}
	}
	if now := m.now(); now.After(pair.Leaf.NotAfter) {
		m.logger.Warn("server certificate has expired", "listener", listener, "file", certFile, "not_after", pair.Leaf.NotAfter)
	}
	return &pair, nil
}

// index fills the SNI tables from the DNS SANs of every certificate of the
// listener, the default's included. A name claimed by two certificates,
// exact or wildcard alike, is refused: which one a client gets would
// otherwise depend on the order of the configuration.
func (ls *listenerState) index() error {
	ls.exact = map[string]*tls.Certificate{}
	ls.wildcard = map[string]*tls.Certificate{}
	owner := map[string]int{} // normalised name → index into certs
	for i, c := range ls.certs {
		for j := range i {
			if ls.certs[j].file == c.file {
				return fmt.Errorf("certificate %s listed twice: %w", c.file, ErrDuplicate)
			}
		}
		for _, raw := range c.tls.Leaf.DNSNames {
			name := normalizeName(raw)
			if name == "" {
				continue
			}
			if prev, ok := owner[name]; ok {
				if prev == i {
					continue // the same SAN twice in one certificate
				}
				return fmt.Errorf("certificates %s and %s both claim %q: %w",
					ls.certs[prev].file, c.file, name, ErrSNIConflict)
			}
			owner[name] = i
			if parent, ok := strings.CutPrefix(name, "*."); ok {
				ls.wildcard[parent] = c.tls
			} else {
				ls.exact[name] = c.tls
			}
		}
	}
	return nil
}

// normalizeName lower-cases a DNS name and drops a trailing dot.
func normalizeName(s string) string {
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// certificate picks the server certificate for the SNI name: the
// certificate claiming the exact name, else the one whose wildcard covers
// its first label (RFC 6125: "*.example" matches "a.example", not
// "a.b.example" nor "example"), else the default. Clients without SNI get
// the default. Names are unique per listener, so no order or key-type
// preference is needed.
func (ls *listenerState) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if name := normalizeName(hello.ServerName); name != "" {
		if c, ok := ls.exact[name]; ok {
			return c, nil
		}
		if i := strings.IndexByte(name, '.'); i > 0 {
			if c, ok := ls.wildcard[name[i+1:]]; ok {
				return c, nil
			}
		}
	}
	return ls.certs[0].tls, nil
}

// parseCertsPEM returns every CERTIFICATE block of a PEM bundle.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, ErrNoCertificates
	}
	return out, nil
}

// ParseCRL parses one CRL in PEM ("X509 CRL") or DER form.
func ParseCRL(data []byte) (*x509.RevocationList, error) {
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q, want X509 CRL", b.Type)
		}
		data = b.Bytes
	}
	return x509.ParseRevocationList(data)
}

// ParseCRLs parses a DER CRL or every CRL of a PEM file, as for a tenant
// whose bundle holds a root and intermediates that each publish one.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		l, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, err
		}
		return []*x509.RevocationList{l}, nil
	}
	var out []*x509.RevocationList
	for ; b != nil; b, rest = pem.Decode(rest) {
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q, want X509 CRL", b.Type)
		}
		l, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", len(out)+1, err)
		}
		out = append(out, l)
	}
	return out, nil
}
