package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/tunnel"
)

// credsPoll is how often a connector looks at its credential files.
const credsPoll = time.Second

// connectorCreds re-reads a connector's certificate, key and pinned
// gateway CA when their files change (polled; a change is taken once it
// held still for one poll, so a certificate and key written one after
// the other are read together) and on every reload (SIGHUP). New tunnels
// present and pin what was read; a file that does not load keeps the
// old credentials in force, and says why once per change.
type connectorCreds struct {
	cfg *config.Config
	c   *tunnel.Connector
	log *slog.Logger

	mu      sync.Mutex
	loaded  [32]byte // digest of the files in force
	pending [32]byte // digest seen at the last poll, not yet taken
	failed  [32]byte // digest that did not load (logged once)
}

func newConnectorCreds(cfg *config.Config, c *tunnel.Connector, log *slog.Logger) *connectorCreds {
	r := &connectorCreds{cfg: cfg, c: c, log: log.With("component", "tunnel")}
	r.loaded = r.digest()
	r.pending = r.loaded
	return r
}

func (r *connectorCreds) files() []string {
	k := r.cfg.Connector
	return []string{k.Cert, k.Key, k.GatewayCA}
}

// digest is the files' contents together; one unreadable counts as empty.
func (r *connectorCreds) digest() [32]byte {
	h := sha256.New()
	for _, f := range r.files() {
		b, _ := os.ReadFile(f)
		sum := sha256.Sum256(b)
		h.Write([]byte(f))
		h.Write(sum[:])
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// watch polls the files until ctx ends.
func (r *connectorCreds) watch(ctx context.Context) error {
	t := time.NewTicker(credsPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		r.poll()
	}
}

func (r *connectorCreds) poll() {
	d := r.digest()
	r.mu.Lock()
	defer r.mu.Unlock()
	if d == r.loaded || d == r.failed {
		r.pending = d
		return
	}
	if d != r.pending {
		r.pending = d // changed since the last poll: wait until it holds still
		return
	}
	r.loadLocked(d, "file change")
}

// reload reads the files now (SIGHUP).
func (r *connectorCreds) reload() {
	d := r.digest()
	r.mu.Lock()
	defer r.mu.Unlock()
	if d == r.loaded {
		return
	}
	r.pending = d
	r.loadLocked(d, "reload")
}

func (r *connectorCreds) loadLocked(d [32]byte, why string) {
	tc, _, err := ConnectorTLS(r.cfg)
	if err == nil {
		var closed int
		closed, err = r.c.SetTLS(tc)
		if err == nil {
			r.loaded, r.failed = d, [32]byte{}
			fp := ""
			if l := leafOf(tc); l != nil {
				fp = certs.FingerprintSHA256(l)
			}
			r.log.Info("connector credentials reloaded: new tunnels present and pin them", "trigger", why,
				"fingerprint", fp, "tunnels_closed", closed)
			return
		}
	}
	if d != r.failed {
		r.failed = d
		r.log.Error("connector credentials not reloaded, the old ones stay in force", "trigger", why, "err", err)
	}
}

// leafOf is the certificate a TLS client config presents first.
func leafOf(tc *tls.Config) *x509.Certificate {
	if len(tc.Certificates) == 0 {
		return nil
	}
	if l := tc.Certificates[0].Leaf; l != nil {
		return l
	}
	l, _ := x509.ParseCertificate(tc.Certificates[0].Certificate[0])
	return l
}
