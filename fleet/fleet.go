package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Path is where a node serves its blocks.
const Path = "/fleet/v1/blocks"

// maxTTL bounds the time a peer may ask for, whatever block_ttl says.
const maxTTL = 24 * time.Hour

// Block is one blocked source and how long it stays blocked.
type Block struct {
	Source netip.Prefix
	Left   time.Duration
}

// wireBlock is a Block on the wire.
type wireBlock struct {
	Source     string `json:"source"`
	TTLSeconds int64  `json:"ttl_seconds"`
}

type wireList struct {
	Blocks []wireBlock `json:"blocks"`
}

// Config configures a Node.
type Config struct {
	Logger *slog.Logger
	// Listen is the address the node serves its blocks on (the management
	// network); empty serves nothing, and only pulls.
	Listen string
	// Cert and Key are the node's certificate, presented as server and as
	// client; PeerCA is the CA every peer's certificate must chain to. It
	// is the fleet's own: a tenant or admin certificate is no peer.
	Cert, Key, PeerCA string
	// Peers are the other nodes' base URLs (https://host:port).
	Peers        []string
	PullInterval time.Duration
	// BlockTTL caps how long a peer's block holds here.
	BlockTTL time.Duration
	// MaxBlocks is the most entries one peer's list may hold; a longer
	// list is refused whole.
	MaxBlocks int
	// Local lists the blocks this node learned itself.
	Local func() []Block
	// Apply puts a peer's block into this node's blocklist, with the same
	// rules as a local one.
	Apply func(netip.Addr, time.Duration) error
}

// Node serves this node's blocks and pulls its peers'.
type Node struct {
	cfg     Config
	log     *slog.Logger
	server  *tls.Config
	client  *http.Client
	srcBits atomic.Pointer[[2]int] // v4, v6 source prefix lengths of the policy in force
	m       *metrics

	mu   sync.Mutex
	seen map[string]map[netip.Prefix]time.Time // per peer: until when we hold its blocks
}

// New checks cfg and loads the certificates; it starts nothing.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Local == nil || cfg.Apply == nil {
		return nil, errors.New("fleet: no blocklist to share")
	}
	if cfg.PullInterval <= 0 || cfg.BlockTTL <= 0 || cfg.MaxBlocks <= 0 {
		return nil, errors.New("fleet: pull_interval, block_ttl and max_blocks must be positive")
	}
	cert, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("fleet cert: %w", err)
	}
	// The node presents it to its peers as server and as client: without
	// both usages every pull would fail its handshake, so say it now.
	if !bothUsages(cert.Leaf) {
		return nil, fmt.Errorf("fleet cert %s: needs the extended key usages serverAuth and clientAuth", cfg.Cert)
	}
	pem, err := os.ReadFile(cfg.PeerCA)
	if err != nil {
		return nil, fmt.Errorf("fleet peer_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("fleet peer_ca %s: no certificate", cfg.PeerCA)
	}
	peers := make([]string, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		u, err := url.Parse(p)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("fleet peer %q: want https://host:port", p)
		}
		peers = append(peers, u.Host)
	}
	n := &Node{
		cfg: cfg,
		log: cfg.Logger.With("component", "fleet"),
		server: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool},
		client: &http.Client{Timeout: pullTimeout(cfg.PullInterval),
			// A redirect is not followed: only the peer whose certificate
			// the handshake verified answers (a 3xx counts unreachable).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}},
				// The peers are on the management network: no proxy.
				Proxy: nil, MaxIdleConnsPerHost: 1,
			}},
		m:    newMetrics(peers),
		seen: map[string]map[netip.Prefix]time.Time{},
	}
	n.srcBits.Store(&[2]int{32, 64})
	return n, nil
}

func pullTimeout(every time.Duration) time.Duration {
	if every < 5*time.Second {
		return 5 * time.Second
	}
	return every
}

// SetSourceBits is told the source prefix lengths of the policy in force:
// a peer's block broader than one source is refused.
func (n *Node) SetSourceBits(v4, v6 int) { n.srcBits.Store(&[2]int{v4, v6}) }

// Run serves and pulls until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if n.cfg.Listen != "" {
		ln, err := net.Listen("tcp", n.cfg.Listen)
		if err != nil {
			return fmt.Errorf("fleet listen: %w", err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(n.serve), TLSConfig: n.server, ReadHeaderTimeout: 5 * time.Second,
			ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)}
		g.Go(func() error {
			if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("fleet server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			return srv.Close()
		})
	}
	for i, p := range n.cfg.Peers {
		g.Go(func() error { n.pullLoop(ctx, p, n.m.peers[i]); return nil })
	}
	return g.Wait()
}

// serve answers GET /fleet/v1/blocks with the blocks this node learned
// itself; the peer has proven its certificate in the handshake.
func (n *Node) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	list := wireList{Blocks: []wireBlock{}}
	for _, b := range n.cfg.Local() {
		if s := int64(b.Left / time.Second); s > 0 {
			list.Blocks = append(list.Blocks, wireBlock{Source: b.Source.String(), TTLSeconds: s})
		}
	}
	n.m.served.Set(float64(len(list.Blocks)))
	n.m.noteServed(len(list.Blocks))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(list)
}

func (n *Node) pullLoop(ctx context.Context, base, peer string) {
	t := time.NewTicker(n.cfg.PullInterval)
	defer t.Stop()
	for {
		n.pull(ctx, base, peer)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func bothUsages(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 {
		return true // no restriction
	}
	var server, client bool
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageAny:
			return true
		case x509.ExtKeyUsageServerAuth:
			server = true
		case x509.ExtKeyUsageClientAuth:
			client = true
		}
	}
	return server && client
}
