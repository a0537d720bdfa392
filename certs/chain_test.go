package certs

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// corp is a tenant PKI with a root and an issuing intermediate, and the
// CRLs of both in one file.
type corp struct {
	root, inter *certstest.CA
	leaf        *certstest.Leaf // issued by inter
	crl         string          // root's CRL then inter's
	dir         string
}

func newCorp(t *testing.T) *corp {
	t.Helper()
	c := &corp{root: certstest.NewCA(t, "corp root"), dir: t.TempDir()}
	c.inter = c.root.Intermediate(t, "corp issuing")
	c.leaf = c.inter.Client(t, "svc", "spiffe://corp/svc")
	c.crl = filepath.Join(c.dir, "corp.crl")
	c.publish(t, nil, nil)
	return c
}

// publish writes the tenant's CRL file: the root's CRL revoking byRoot,
// then the intermediate's revoking byInter.
func (c *corp) publish(t *testing.T, byRoot, byInter []*certstest.Leaf) {
	t.Helper()
	next := time.Now().Add(time.Hour)
	r := readFile(t, c.root.CRL(t, filepath.Join(c.dir, "root.crl"), next, byRoot...))
	i := readFile(t, c.inter.CRL(t, filepath.Join(c.dir, "inter.crl"), next, byInter...))
	certstest.WriteFile(t, c.crl, append(r, i...))
}

func (c *corp) tenant() policy.Tenant {
	return policy.Tenant{ID: "corp", ClientCA: c.root.CertFile, Intermediates: c.inter.CertFile, CRL: c.crl}
}

// present runs a real handshake against the listener web presenting cert,
// and returns its result and, when it passed, the tenant.
func present(t *testing.T, m *Manager, k *pki, cert tls.Certificate) (Result, string) {
	t.Helper()
	srv, err := m.TLSConfig("web")
	if err != nil {
		t.Fatal(err)
	}
	cc := k.clientConfig(nil)
	cc.Certificates = []tls.Certificate{cert}
	r := handshake(t, srv, cc, false)
	if r.serverErr != nil {
		return ResultOf(r.serverErr), ""
	}
	id, err := m.Identify(r.server)
	if err != nil {
		t.Fatalf("handshake passed, Identify: %v", err)
	}
	return ResultOK, id.Tenant
}

// TestRevokedIntermediateLeafAlone is the attack: the root's CRL revokes
// the intermediate, and a client of that intermediate sends its leaf alone,
// hoping the intermediate is taken as an anchor and the root's CRL never
// read. It is refused, and so is the whole chain.
func TestRevokedIntermediateLeafAlone(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{c.tenant()}
	m := newManager(t, Config{}, p)
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{{"leaf alone", c.leaf.Alone()}, {"leaf and intermediate", c.leaf.TLS}} {
		if res, tenant := present(t, m, k, tc.cert); res != ResultOK || tenant != "corp" {
			t.Fatalf("%s before the revocation: %s %q, want corp", tc.name, res, tenant)
		}
	}
	c.publish(t, []*certstest.Leaf{c.inter.AsLeaf()}, nil)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{{"leaf alone", c.leaf.Alone()}, {"leaf and intermediate", c.leaf.TLS}} {
		if res, _ := present(t, m, k, tc.cert); res != ResultRevoked {
			t.Errorf("%s under an intermediate the root revoked: %s, want revoked", tc.name, res)
		}
	}
}

// TestClientCARootsOnly: an intermediate in client_ca would be an anchor,
// so it is refused there with a message saying where it goes; the
// generation in force stays.
func TestClientCARootsOnly(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{c.tenant()}
	m := newManager(t, Config{}, p)
	bad := clonePolicy(p)
	bad.Tenants[0].ClientCA = certstest.Bundle(t, c.root, c.inter)
	err := m.Apply(bad)
	if !errors.Is(err, ErrNotRoot) || !strings.Contains(err.Error(), "tenants[].intermediates") || !strings.Contains(err.Error(), "corp issuing") {
		t.Fatalf("intermediate in client_ca: %v, want ErrNotRoot naming it and where intermediates go", err)
	}
	bad.Tenants[0].ClientCA = c.inter.CertFile // as the README used to say, the intermediate alone
	if err := m.Apply(bad); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("intermediate alone in client_ca: %v", err)
	}
	if res, tenant := present(t, m, k, c.leaf.Alone()); res != ResultOK || tenant != "corp" {
		t.Errorf("after refused applies: %s %q, want the previous generation serving corp", res, tenant)
	}
}

// TestIntermediatesChainToARoot: each intermediate must chain to a root of
// the tenant's client_ca; a foreign root in the file is refused, a copy of
// the tenant's own root (as init-ca --parent writes ca.pem) is skipped.
func TestIntermediatesChainToARoot(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	policyCA := c.root.Intermediate(t, "corp policy")
	// An issuing CA under the policy CA, two levels below the root.
	deep := policyCA.Intermediate(t, "corp deep issuing")
	foreign := certstest.NewCA(t, "foreign root")
	foreignInter := foreign.Intermediate(t, "foreign issuing")
	for _, tc := range []struct {
		name  string
		file  string
		want  error
		leaf  *certstest.Leaf
		owner string
	}{
		{name: "intermediate and its root, as init-ca writes them", file: certstest.Bundle(t, c.inter, c.root), leaf: c.leaf, owner: "corp"},
		{name: "two levels, lower one first", file: certstest.Bundle(t, deep, policyCA), leaf: deep.Client(t, "deep"), owner: "corp"},
		{name: "lower level without the one above it", file: certstest.Bundle(t, deep), want: ErrIntermediateNoRoot},
		{name: "intermediate of another root", file: certstest.Bundle(t, c.inter, foreignInter), want: ErrIntermediateNoRoot},
		{name: "a foreign root", file: certstest.Bundle(t, c.inter, foreign), want: ErrRootInIntermediates},
		{name: "only the root", file: certstest.Bundle(t, c.root), want: ErrNoCertificates},
		{name: "a leaf", file: c.leaf.CertFile, want: ErrNotCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := clonePolicy(k.policy)
			p.Tenants = []policy.Tenant{{ID: "corp", ClientCA: c.root.CertFile, Intermediates: tc.file}}
			m, err := New(Config{})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Apply(p)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Apply: %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			if res, tenant := present(t, m, k, tc.leaf.Alone()); res != ResultOK || tenant != tc.owner {
				t.Errorf("leaf alone: %s %q, want %s", res, tenant, tc.owner)
			}
		})
	}
}

// TestCRLOfEveryIssuer: a tenant with a crl needs one from every issuer of
// the chain, the root's (for the intermediate) as well as the
// intermediate's (for the leaf).
func TestCRLOfEveryIssuer(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	only := func(ca *certstest.CA) string {
		return ca.CRL(t, filepath.Join(t.TempDir(), "only.crl"), time.Now().Add(time.Hour))
	}
	for _, tc := range []struct {
		name string
		crl  string
		want Result
	}{
		{"intermediate's CRL alone", only(c.inter), ResultNoCRL},
		{"root's CRL alone", only(c.root), ResultNoCRL},
		{"both", c.crl, ResultOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := clonePolicy(k.policy)
			ten := c.tenant()
			ten.CRL = tc.crl
			p.Tenants = []policy.Tenant{ten}
			m := newManager(t, Config{}, p)
			for _, cert := range []tls.Certificate{c.leaf.Alone(), c.leaf.TLS} {
				if res, _ := present(t, m, k, cert); res != tc.want {
					t.Errorf("%d certificates sent: %s, want %s", len(cert.Certificate), res, tc.want)
				}
			}
		})
	}
}

// TestIntermediatesNarrowTenant: two tenants under one root, each with its
// own issuing CA, get exactly the leaves of their own; a leaf the root
// issued directly, or one of an intermediate neither lists, is nobody's.
// A CRL one intermediate publishes still revokes its leaf.
func TestIntermediatesNarrowTenant(t *testing.T) {
	k := newPKI(t)
	root := certstest.NewCA(t, "shared root")
	a, b, other := root.Intermediate(t, "issuing a"), root.Intermediate(t, "issuing b"), root.Intermediate(t, "issuing other")
	leafA, leafB, leafOther := a.Client(t, "a"), b.Client(t, "b"), other.Client(t, "other")
	direct := root.Client(t, "direct")
	bCRL := b.CRL(t, filepath.Join(t.TempDir(), "b.crl"), time.Now().Add(time.Hour))
	rootCRL := readFile(t, root.CRL(t, filepath.Join(t.TempDir(), "root.crl"), time.Now().Add(time.Hour)))
	certstest.WriteFile(t, bCRL, append(rootCRL, readFile(t, bCRL)...))
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{
		{ID: "a", ClientCA: root.CertFile, Intermediates: a.CertFile},
		{ID: "b", ClientCA: root.CertFile, Intermediates: b.CertFile, CRL: bCRL},
	}
	m := newManager(t, Config{}, p)
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		want   Result
		tenant string
	}{
		{"a alone", leafA.Alone(), ResultOK, "a"},
		{"b with its chain", leafB.TLS, ResultOK, "b"},
		{"issued by the root itself", direct.TLS, ResultUnknownCA, ""},
		{"an intermediate nobody lists", leafOther.TLS, ResultUnknownCA, ""},
	} {
		if res, tenant := present(t, m, k, tc.cert); res != tc.want || tenant != tc.tenant {
			t.Errorf("%s: %s %q, want %s %q", tc.name, res, tenant, tc.want, tc.tenant)
		}
	}
	// b's issuing CA revokes its leaf: b's CRL file holds the root's CRL too.
	certstest.WriteFile(t, bCRL, append(rootCRL, readFile(t, b.CRL(t, filepath.Join(t.TempDir(), "b2.crl"), time.Now().Add(time.Hour), leafB))...))
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if res, _ := present(t, m, k, leafB.Alone()); res != ResultRevoked {
		t.Errorf("b revoked by its intermediate: %s, want revoked", res)
	}
}

// TestCRLBundle: one PEM file with the CRLs of a root and of its
// intermediate; two CRLs of one CA are refused, and a CRL from a CA the
// tenant does not list has nothing to be checked against.
func TestCRLBundle(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	bad := c.inter.Client(t, "bad")
	c.publish(t, nil, []*certstest.Leaf{bad})
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{c.tenant()}
	m := newManager(t, Config{}, p)
	for _, tc := range []struct {
		leaf *certstest.Leaf
		want Result
	}{{c.leaf, ResultOK}, {bad, ResultRevoked}} {
		_, err := m.Identify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{tc.leaf.Cert, c.inter.Cert}})
		if got := ResultOf(err); got != tc.want {
			t.Errorf("%s: %s (%v), want %s", tc.leaf.Cert.Subject.CommonName, got, err, tc.want)
		}
	}
	if next := m.state.Load().tenants[0].crls; len(next) != 2 {
		t.Fatalf("%d CRLs loaded, want 2", len(next))
	}
	interCRL := readFile(t, filepath.Join(c.dir, "inter.crl"))
	twice := filepath.Join(c.dir, "twice.crl")
	certstest.WriteFile(t, twice, append(append([]byte{}, interCRL...), interCRL...))
	p.Tenants[0].CRL = twice
	if err := m.Apply(p); !errors.Is(err, ErrDuplicate) {
		t.Errorf("two CRLs of one issuer: %v", err)
	}
	p.Tenants[0].Intermediates = "" // the intermediate's CRL has no CA to check it against
	p.Tenants[0].CRL = c.crl
	if err := m.Apply(p); !errors.Is(err, ErrCRLSignature) {
		t.Errorf("CRL of a CA the tenant does not list: %v", err)
	}
}

// reissue returns a copy of the root ca made again with the same name and
// key (a new serial and validity), written to its own file.
func reissue(t *testing.T, ca *certstest.CA) string {
	t.Helper()
	tmpl := *ca.Cert
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotAfter = ca.Cert.NotAfter.Add(24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, ca.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "reissued.pem")
	certstest.WriteFile(t, path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return path
}

// TestSharedRootNeedsIntermediatesEverywhere: tenant a trusts a root
// without listing intermediates, tenant b the same root with its issuing
// CA. b's issuing CA could then mint a leaf with a's identity and a would
// take it; the configuration is refused (so check refuses it too), naming
// both tenants, and the generation in force stays. A copy of the root made
// again with the same key is the same root.
func TestSharedRootNeedsIntermediatesEverywhere(t *testing.T) {
	k := newPKI(t)
	root := certstest.NewCA(t, "shared root")
	ia, ib := root.Intermediate(t, "issuing a"), root.Intermediate(t, "issuing b")
	evil := ib.Client(t, "evil", "spiffe://a/admin")
	good := clonePolicy(k.policy)
	good.Tenants = []policy.Tenant{
		{ID: "a", ClientCA: root.CertFile, Intermediates: ia.CertFile, Identities: policy.Identities{URISAN: []string{"spiffe://a/*"}}},
		{ID: "b", ClientCA: root.CertFile, Intermediates: ib.CertFile, Identities: policy.Identities{URISAN: []string{"spiffe://b/*"}}},
	}
	m := newManager(t, Config{}, good)
	if res, tenant := present(t, m, k, evil.TLS); res != ResultNoTenant || tenant != "" {
		t.Fatalf("b's leaf with a's URI while a lists its intermediate: %s %q, want no_tenant", res, tenant)
	}
	for _, rootA := range []string{root.CertFile, reissue(t, root)} {
		bad := clonePolicy(good)
		bad.Tenants[0].ClientCA, bad.Tenants[0].Intermediates = rootA, ""
		err := m.Apply(bad)
		if !errors.Is(err, ErrSharedRoot) || !strings.Contains(err.Error(), `tenants "a" and "b"`) {
			t.Errorf("a without intermediates on b's root: %v, want ErrSharedRoot naming a and b", err)
		}
		if res, tenant := present(t, m, k, evil.TLS); res != ResultNoTenant || tenant != "" {
			t.Errorf("after the refused Apply: %s %q, want the generation in force (no_tenant)", res, tenant)
		}
	}
}

// TestIntermediatesCheckedAsHandshakes: an intermediate that no handshake
// could accept a leaf of is refused at load (so by check), as the
// handshake's chain verification would refuse every leaf as other: a
// root whose path length leaves no room for it, an intermediate limited to
// serverAuth. One the path length allows loads, and so does one not valid
// now (staged for later, or expired): validity is a handshake's verdict.
func TestIntermediatesCheckedAsHandshakes(t *testing.T) {
	k := newPKI(t)
	pathLen := func(n int) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = n, n == 0 }
	}
	rootPL0, rootPL1 := certstest.NewCAWith(t, "root pathlen 0", pathLen(0)), certstest.NewCAWith(t, "root pathlen 1", pathLen(1))
	root := certstest.NewCA(t, "root")
	policyCA := rootPL1.Intermediate(t, "policy CA")
	later := root.IntermediateWith(t, "issuing from tomorrow", func(c *x509.Certificate) { c.NotBefore = time.Now().Add(24 * time.Hour) })
	for _, tc := range []struct {
		name  string
		root  *certstest.CA
		inter string
		want  string // in the error; "" for none
		leaf  *certstest.Leaf
		res   Result
	}{
		{name: "under a root of path length 0", root: rootPL0, inter: rootPL0.Intermediate(t, "issuing").CertFile, want: `path length of "CN=root pathlen 0`},
		{name: "two under a root of path length 1", root: rootPL1, inter: certstest.Bundle(t, policyCA.Intermediate(t, "deep"), policyCA), want: `path length of "CN=root pathlen 1`},
		{name: "limited to serverAuth", root: root, inter: root.IntermediateWith(t, "server issuing", func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}).CertFile, want: "key usage"},
		{name: "one under a root of path length 1", root: rootPL1, inter: policyCA.CertFile, leaf: policyCA.Client(t, "ok"), res: ResultOK},
		// x509 has one reason for a CA outside its validity, either way.
		{name: "not valid before tomorrow", root: root, inter: later.CertFile, leaf: later.Client(t, "early"), res: ResultExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := clonePolicy(k.policy)
			p.Tenants = []policy.Tenant{{ID: "corp", ClientCA: tc.root.CertFile, Intermediates: tc.inter}}
			m, err := New(Config{})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Apply(p)
			if tc.want != "" {
				if !errors.Is(err, ErrIntermediateUnusable) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Apply: %v, want ErrIntermediateUnusable saying %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if res, _ := present(t, m, k, tc.leaf.TLS); res != tc.res {
				t.Errorf("leaf: %s, want %s", res, tc.res)
			}
		})
	}
}

// TestLookalikeSubCA: b's issuing CA makes a sub-CA with the name of a's
// issuing CA and its own key. Its leaves are not a's: an intermediate is a
// tenant's by name and key.
func TestLookalikeSubCA(t *testing.T) {
	k := newPKI(t)
	root := certstest.NewCA(t, "shared root")
	ia, ib := root.Intermediate(t, "issuing a"), root.Intermediate(t, "issuing b")
	fake := ib.Intermediate(t, "issuing a")
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{
		{ID: "a", ClientCA: root.CertFile, Intermediates: ia.CertFile},
		{ID: "b", ClientCA: root.CertFile, Intermediates: ib.CertFile},
	}
	m := newManager(t, Config{}, p)
	if res, tenant := present(t, m, k, fake.Client(t, "lookalike").TLS); res != ResultUnknownCA || tenant != "" {
		t.Errorf("leaf of a sub-CA named like a's issuing CA: %s %q, want unknown_ca", res, tenant)
	}
	if res, tenant := present(t, m, k, ia.Client(t, "real").TLS); res != ResultOK || tenant != "a" {
		t.Errorf("leaf of a's issuing CA: %s %q, want a", res, tenant)
	}
}

// TestCrossSignedRevocation: one issuing key certified by two roots (a
// rollover), and the new root revokes its certificate of it. Both chains a
// leaf has are checked, whichever certificate of the issuing CA the client
// sends, or none.
func TestCrossSignedRevocation(t *testing.T) {
	k := newPKI(t)
	r1, r2 := certstest.NewCA(t, "root 1"), certstest.NewCA(t, "root 2")
	i1 := r1.Intermediate(t, "issuing")
	i2 := &certstest.CA{Name: "issuing", Key: i1.Key}
	tmpl := *i1.Cert
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, r2.Cert, i1.Key.Public(), r2.Key)
	if err != nil {
		t.Fatal(err)
	}
	if i2.Cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	leaf := i1.Client(t, "svc")
	dir := t.TempDir()
	crl := filepath.Join(dir, "t.crl")
	var all []byte
	for _, f := range []string{r1.CRL(t, filepath.Join(dir, "r1.crl"), time.Now().Add(time.Hour)),
		r2.CRL(t, filepath.Join(dir, "r2.crl"), time.Now().Add(time.Hour), i2.AsLeaf()),
		i1.CRL(t, filepath.Join(dir, "i.crl"), time.Now().Add(time.Hour))} {
		all = append(all, readFile(t, f)...)
	}
	certstest.WriteFile(t, crl, all)
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{{ID: "t", ClientCA: certstest.Bundle(t, r1, r2), Intermediates: certstest.Bundle(t, i1, i2), CRL: crl}}
	m := newManager(t, Config{}, p)
	for _, sent := range [][]*x509.Certificate{{i1.Cert}, {i2.Cert}, nil} {
		cert := leaf.Alone()
		for _, c := range sent {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		if res, _ := present(t, m, k, cert); res != ResultRevoked {
			t.Errorf("%d certificates of the issuing CA sent: %s, want revoked", len(sent), res)
		}
	}
}

// TestClientSentIntermediates: a tenant that lists no intermediates takes
// a leaf of an intermediate under its root when the client sends the
// intermediate; gatehouse cannot build that chain from the leaf alone.
func TestClientSentIntermediates(t *testing.T) {
	k := newPKI(t)
	root := certstest.NewCA(t, "corp root")
	leaf := root.Intermediate(t, "corp issuing").Client(t, "svc")
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{{ID: "corp", ClientCA: root.CertFile}}
	m := newManager(t, Config{}, p)
	if res, tenant := present(t, m, k, leaf.TLS); res != ResultOK || tenant != "corp" {
		t.Errorf("leaf and its intermediate: %s %q, want corp", res, tenant)
	}
	if res, _ := present(t, m, k, leaf.Alone()); res != ResultUnknownCA {
		t.Errorf("leaf alone: %s, want unknown_ca", res)
	}
}

// TestCRLStaleUnset: a policy whose tls.crl_stale is empty (an embedder's,
// or a config layer's that forgot it) fails a stale CRL like "fail".
func TestCRLStaleUnset(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	p := clonePolicy(k.policy)
	p.TLS.CRLStale = ""
	p.Tenants = []policy.Tenant{c.tenant()} // its CRLs are due in an hour
	m := newManager(t, Config{Now: func() time.Time { return time.Now().Add(2 * time.Hour) }}, p)
	if res, _ := present(t, m, k, c.leaf.TLS); res != ResultCRLStale {
		t.Errorf("stale CRL with tls.crl_stale unset: %s, want crl_stale", res)
	}
}
