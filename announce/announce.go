package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	apb "google.golang.org/protobuf/types/known/anypb"
)

// Neighbor is one router the speaker peers with.
type Neighbor struct {
	Address netip.Addr
	AS      uint32
	// Password turns on TCP MD5 signatures (RFC 2385); empty: none.
	Password string
	// Port is the neighbour's BGP port; 0 means 179.
	Port uint16
}

// Config is what the speaker announces and to whom.
type Config struct {
	LocalAS   uint32
	RouterID  netip.Addr // IPv4
	Neighbors []Neighbor
	// Prefixes are host routes (/32, /128); each is announced to the
	// neighbours of its own address family.
	Prefixes []netip.Prefix
	// Communities are RFC 1997 communities, AS<<16|value.
	Communities []uint32
}

func (c Config) validate() error {
	var errs []error
	if c.LocalAS == 0 {
		errs = append(errs, errors.New("local AS is 0"))
	}
	if !c.RouterID.Is4() {
		errs = append(errs, fmt.Errorf("router id %v is not an IPv4 address", c.RouterID))
	}
	if len(c.Neighbors) == 0 {
		errs = append(errs, errors.New("no neighbours"))
	}
	for _, p := range c.Prefixes {
		if !p.IsValid() || p.Bits() != p.Addr().BitLen() {
			errs = append(errs, fmt.Errorf("prefix %v is not a host route", p))
		}
	}
	return errors.Join(errs...)
}

// connectRetry is the seconds between connection attempts to a neighbour
// (GoBGP waits between one and two times this).
const connectRetry = 5

// Speaker is one embedded BGP speaker (GoBGP). It does not listen: it
// dials its neighbours, so it needs no port of its own on the node.
type Speaker struct {
	cfg Config
	log *slog.Logger
	srv *server.BgpServer

	mu        sync.Mutex
	announced map[netip.Prefix][]byte // prefix → the path's UUID in GoBGP
	stopped   bool                    // Stop was called: nothing is announced again
	closed    bool
}

// New starts a speaker and its sessions; nothing is announced until
// Announce. Close stops it.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Speaker, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bgp: %w", err)
	}
	log := logger.With("component", "bgp")
	srv := server.NewBgpServer(server.LoggerOption(&slogAdapter{log: log}))
	go srv.Serve()
	s := &Speaker{cfg: cfg, log: log, srv: srv, announced: map[netip.Prefix][]byte{}}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.LocalAS, RouterId: cfg.RouterID.String(), ListenPort: -1,
	}}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("bgp: start: %w", err)
	}
	for _, n := range cfg.Neighbors {
		p := &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.AS, AuthPassword: n.Password},
			Transport: &api.Transport{RemotePort: uint32(n.Port)},
			// GoBGP's default retry is 120–240 s after a failed connect; a
			// router that restarts should hear the node again within seconds.
			Timers: &api.Timers{Config: &api.TimersConfig{ConnectRetry: connectRetry}},
		}
		if n.Port == 0 {
			p.Transport.RemotePort = 179
		}
		if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: p}); err != nil {
			_ = srv.StopBgp(context.Background(), &api.StopBgpRequest{})
			srv.Stop()
			return nil, fmt.Errorf("bgp: neighbor %s: %w", n.Address, err)
		}
	}
	return s, nil
}

// Announce announces every configured prefix (on) or withdraws them all
// (off). It is idempotent; a prefix already in the wanted state is left.
// After Stop it announces nothing.
func (s *Speaker) Announce(ctx context.Context, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("bgp: speaker closed")
	}
	return s.announce(ctx, on && !s.stopped)
}

// Stop withdraws every prefix for good: a later Announce(true) does
// nothing. It reports whether anything was announced before. The sessions
// stay up, so the routers hear the withdrawal as an UPDATE.
func (s *Speaker) Stop(ctx context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	had := len(s.announced) > 0
	if s.closed {
		return had, nil
	}
	return had, s.announce(ctx, false)
}

func (s *Speaker) announce(ctx context.Context, on bool) error {
	var errs []error
	for _, p := range s.cfg.Prefixes {
		id, has := s.announced[p]
		switch {
		case on && !has:
			path, err := s.path(p)
			if err == nil {
				var r *api.AddPathResponse
				if r, err = s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err == nil {
					s.announced[p] = r.Uuid
					s.log.Info("announced", "prefix", p)
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("announce %s: %w", p, err))
			}
		case !on && has:
			if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Uuid: id}); err != nil {
				errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
				continue
			}
			delete(s.announced, p)
			s.log.Info("withdrawn", "prefix", p)
		}
	}
	return errors.Join(errs...)
}

func (s *Speaker) path(p netip.Prefix) (*api.Path, error) {
	nlri, err := apb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	if err != nil {
		return nil, err
	}
	origin, err := apb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return nil, err
	}
	attrs := []*apb.Any{origin}
	// An unspecified next hop is replaced by the session's own address.
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	var hop *apb.Any
	if p.Addr().Is4() {
		hop, err = apb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
	} else {
		family = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
		hop, err = apb.New(&api.MpReachNLRIAttribute{Family: family, NextHops: []string{"::"}, Nlris: []*apb.Any{nlri}})
	}
	if err != nil {
		return nil, err
	}
	attrs = append(attrs, hop)
	if len(s.cfg.Communities) > 0 {
		c, err := apb.New(&api.CommunitiesAttribute{Communities: s.cfg.Communities})
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, c)
	}
	return &api.Path{Family: family, Nlri: nlri, Pattrs: attrs}, nil
}

// Announced lists the prefixes announced now, sorted.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Prefix, 0, len(s.announced))
	for p := range s.announced {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// Session is the state of the session with one neighbour.
type Session struct {
	Neighbor string `json:"neighbor"`
	AS       uint32 `json:"as"`
	State    string `json:"state"` // established, active, connect, idle, …
	Up       bool   `json:"up"`
}

// Sessions reports each neighbour's session, in configuration order.
func (s *Speaker) Sessions(ctx context.Context) []Session {
	state := map[string]string{}
	_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.GetConf() != nil && p.GetState() != nil {
			state[p.Conf.NeighborAddress] = p.State.SessionState.String()
		}
	})
	out := make([]Session, 0, len(s.cfg.Neighbors))
	for _, n := range s.cfg.Neighbors {
		st := state[n.Address.String()]
		if st == "" {
			st = "UNKNOWN"
		}
		out = append(out, Session{Neighbor: n.Address.String(), AS: n.AS, State: strings.ToLower(st), Up: st == api.PeerState_ESTABLISHED.String()})
	}
	return out
}

// Close withdraws what is announced, closes the sessions with a BGP
// notification (the routers drop this node's routes at once) and stops
// the speaker.
func (s *Speaker) Close() error {
	_, err := s.Stop(context.Background())
	s.mu.Lock()
	was := s.closed
	s.closed = true
	s.mu.Unlock()
	if was {
		return nil
	}
	err = errors.Join(err, s.srv.StopBgp(context.Background(), &api.StopBgpRequest{}))
	s.srv.Stop()
	return err
}

// Collector returns the speaker's metrics: gatehouse_bgp_session_up per
// neighbour and gatehouse_bgp_announced per configured prefix (bounded by
// the configuration).
func (s *Speaker) Collector() prometheus.Collector { return &collector{s: s} }

var (
	sessionUpDesc = prometheus.NewDesc("gatehouse_bgp_session_up",
		"1 while the BGP session with the neighbour is established.", []string{"neighbor"}, nil)
	announcedDesc = prometheus.NewDesc("gatehouse_bgp_announced",
		"1 while the prefix is announced to the neighbours.", []string{"prefix"}, nil)
)

type collector struct{ s *Speaker }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionUpDesc
	ch <- announcedDesc
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	// Bounded as the status page bounds it: a speaker that does not
	// answer reports its sessions down rather than hang the scrape.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, ss := range c.s.Sessions(ctx) {
		ch <- prometheus.MustNewConstMetric(sessionUpDesc, prometheus.GaugeValue, b2f(ss.Up), ss.Neighbor)
	}
	on := c.s.Announced()
	for _, p := range c.s.cfg.Prefixes {
		ch <- prometheus.MustNewConstMetric(announcedDesc, prometheus.GaugeValue, b2f(slices.Contains(on, p)), p.String())
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
