package nft

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// Config configures an Enforcer.
type Config struct {
	Logger *slog.Logger
	// NetNS is an open file descriptor of the network namespace to work in;
	// 0 means the current one. The caller keeps it open and closes it.
	NetNS int
	// ReconcileInterval is how often Run checks the table for drift.
	// Zero means DefaultReconcileInterval.
	ReconcileInterval time.Duration
	// BlockPollInterval is how often Run reads the blocked sets for new
	// scanners. Zero means DefaultBlockPollInterval.
	BlockPollInterval time.Duration
	// OnBlock, if set, is called once for every source the scan rule has
	// newly put into a blocked set, with the time it stays blocked; it
	// pushes the source into the XDP blocklist. The address is the
	// source's first address (the sets key sources by the policy's
	// SourcePrefix). Sources that came in through Block are not handed
	// back. An error is logged and the call repeated at the next poll.
	OnBlock func(addr netip.Addr, d time.Duration) error
}

// Defaults for Config.
const (
	DefaultReconcileInterval = 10 * time.Second
	DefaultBlockPollInterval = time.Second
)

// Errors.
var (
	ErrClosed   = errors.New("nft enforcer closed")
	ErrNoPolicy = errors.New("no policy applied yet")
	ErrBadNetNS = errors.New("netns must be 0 or an open file descriptor")
)

// Buffers of the netlink socket. A generation with 100k ranges is one
// batch of several megabytes, and a batch has to be one sendmsg; the
// *FORCE options pass net.core.wmem_max, which the daemon may (it runs with
// CAP_NET_ADMIN to use nftables at all).
const (
	sendBuffer = 64 << 20
	recvBuffer = 8 << 20
	ioTimeout  = 30 * time.Second
)

// Enforcer owns the table inet gatehouse in one network namespace.
type Enforcer struct {
	log     *slog.Logger
	netns   int
	every   time.Duration
	pollGap time.Duration
	onBlock func(netip.Addr, time.Duration) error

	// testDial, when set, replaces the kernel with a fake (unit tests).
	testDial nltest.Func

	mu      sync.Mutex     // serialises Apply, reconcile and the block poll
	wc      *nftables.Conn // lasting connection of Apply; see writer
	wnl     *netlink.Conn  // its socket, for deadlines
	closed  bool
	cur     *spec    // what the kernel holds, nil before the first Apply
	curRS   *ruleset // the objects cur was built into
	lastGen uint32   // ruleset generation seen at the last clean check
	// blocked holds the sources of the blocked sets at the last poll, and
	// those Block added since; count, how many each set held.
	blocked map[netip.Addr]blockState
	count   [2]int

	metrics *metrics
}

// New validates cfg and returns an Enforcer. It does not touch the kernel:
// the first Apply adopts (replaces) an existing table.
func New(cfg Config) (*Enforcer, error) {
	if cfg.NetNS < 0 {
		return nil, ErrBadNetNS
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Enforcer{
		log:     logger.With("component", "nft"),
		netns:   cfg.NetNS,
		every:   cfg.ReconcileInterval,
		pollGap: cfg.BlockPollInterval,
		onBlock: cfg.OnBlock,
		blocked: map[netip.Addr]blockState{},
		metrics: newMetrics(),
	}
	if e.every <= 0 {
		e.every = DefaultReconcileInterval
	}
	if e.pollGap <= 0 {
		e.pollGap = DefaultBlockPollInterval
	}
	return e, nil
}

// conn returns a netlink connection for one operation: scrapes, reconcile
// checks and the block poll dial afresh; Apply uses writer.
func (e *Enforcer) conn() (*nftables.Conn, error) {
	return newConn(e.netns, e.testDial)
}

// writer returns the connection that Apply sends its batches on. It lasts
// between Applies: when a netfilter socket closes, the kernel first waits
// for the release of everything a commit removed (the previous table's
// elements, ≈ 45 ms at 100k ranges), which a per-Apply socket would add to
// every full replace; on a lasting socket that release runs beside the next
// steps. Callers hold e.mu; after an error they call dropWriter, so a
// socket left mid-conversation is never reused.
func (e *Enforcer) writer() (*nftables.Conn, error) {
	if e.testDial != nil {
		return e.conn()
	}
	if e.wc == nil {
		var nl *netlink.Conn
		c, err := nftables.New(nftables.WithNetNSFd(e.netns), nftables.AsLasting(),
			nftables.WithSockOptions(func(c *netlink.Conn) error {
				nl = c
				return socketOptions(c)
			}))
		if err != nil {
			return nil, fmt.Errorf("netlink connection: %w", err)
		}
		e.wc, e.wnl = c, nl
	}
	if e.wnl != nil {
		if err := e.wnl.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
			e.dropWriter()
			return nil, fmt.Errorf("netlink connection: %w", err)
		}
	}
	return e.wc, nil
}

// dropWriter closes the lasting connection; the next writer dials anew.
func (e *Enforcer) dropWriter() {
	if e.wc != nil {
		e.wc.CloseLasting()
	}
	e.wc, e.wnl = nil, nil
}

func newConn(netns int, testDial nltest.Func) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithNetNSFd(netns)}
	if testDial != nil {
		opts = append(opts, nftables.WithTestDial(testDial))
	} else {
		opts = append(opts, nftables.WithSockOptions(socketOptions))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netlink connection: %w", err)
	}
	return c, nil
}

func socketOptions(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer),
		)
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("netlink socket buffers: %w", err)
	}
	// Errors explained (the kernel's message and the offending attribute).
	// They are not capped: an error echoes the failed message, at most one
	// 60 kB element chunk, which the receive buffer holds; and the netlink
	// library reads a capped error with explanations as a short message,
	// losing its errno (a full set's ENFILE among them).
	if err := c.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		return err
	}
	return c.SetDeadline(time.Now().Add(ioTimeout))
}

// Apply installs one policy generation in one netlink batch: all or nothing.
// The first generation, a change of rule shape (mode, rates, scan settings)
// or a repair replaces the whole table in the batch; later generations that
// only change set contents are sent as element additions and deletions
// computed from the generation in memory. On error the kernel keeps the
// previous generation.
func (e *Enforcer) Apply(p *policy.Policy) error {
	next, err := newSpec(p, e.synOptions(p))
	if err != nil {
		return err
	}
	start := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.cur != nil && e.cur.sameShape(next) {
		err = e.applyDiff(next)
		if err != nil {
			e.dropWriter()
			// The batch changed nothing, so the kernel no longer holds
			// what memory says (someone deleted the table or a set):
			// install the whole generation instead.
			e.log.Warn("set update refused, replacing the table", "err", err)
			if err = e.applyFull(next); err == nil {
				e.metrics.drift.Inc()
			}
		}
	} else {
		err = e.applyFull(next)
	}
	if err != nil {
		e.dropWriter()
		return err
	}
	// gatehouse_policy_apply_seconds{layer="nftables"} is the daemon's: it
	// times every layer's Apply alike.
	d := time.Since(start)
	e.log.Debug("policy applied", "generation", p.Generation, "duration", d,
		"admitted_v4", len(next.adm4), "admitted_v6", len(next.adm6), "strict", next.strict, "forward", next.forward,
		"syn_proxy_mss", fmt.Sprintf("%d/%d", next.syn.mss4, next.syn.mss6), "syn_proxy_wscale", next.syn.wscale)
	return nil
}

// synOptions reads the TCP options synproxy is to answer with (see
// synOptions), falling back to a 1500-byte MTU and window scale 7 with a
// warning: they shape the clients' speed, not who gets in.
func (e *Enforcer) synOptions(p *policy.Policy) synOptions {
	if p == nil || e.testDial != nil {
		return defaultSynOptions()
	}
	o, err := readSynOptions(e.netns, p.Interface)
	if err != nil {
		e.log.Warn("TCP settings for the SYN proxy unreadable, using a 1500-byte MTU and window scale 7", "err", err)
		return defaultSynOptions()
	}
	return o
}

// applyFull replaces the table in one batch: create it if absent, delete it,
// create it with everything. Sources still blocked in the old table are
// carried over with their remaining time, and once the batch succeeded the
// old counter values are folded into the exported totals so they stay
// monotonic.
func (e *Enforcer) applyFull(next *spec) error {
	c, err := e.writer()
	if err != nil {
		return err
	}
	e.metrics.swap.Lock()
	defer e.metrics.swap.Unlock()
	// What the table in force holds: sources still blocked, and counters.
	// Both reads fail when there is no table yet (or a set was deleted by
	// hand); the socket is then dialled anew, so the batch below never
	// reads a reply left over from a failed read.
	carried, rerr := e.readBlocked(c, next)
	old, cerr := readCounters(c)
	if rerr != nil || cerr != nil {
		if e.cur != nil {
			e.log.Warn("reading the table in force failed; replacing it without what could not be read",
				"err", errors.Join(rerr, cerr))
		}
		e.dropWriter()
		if c, err = e.writer(); err != nil {
			return err
		}
	}
	rs := next.build()
	t := rs.table
	c.AddTable(t)
	c.DelTable(t)
	if err := queueRuleset(c, rs, carried); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table: %w", err) // the old table and its counters stay
	}
	e.metrics.fold(old)
	e.remember(carried, e.cur == nil)
	e.cur, e.curRS, e.lastGen = next, rs, 0
	return nil
}

// queueRuleset queues the creation of every object of rs on c.
func queueRuleset(c *nftables.Conn, rs *ruleset, carried map[bool][]nftables.SetElement) error {
	c.AddTable(rs.table)
	for _, name := range rs.counters {
		c.AddObj(&nftables.CounterObj{Table: rs.table, Name: name})
	}
	for _, s := range rs.sets {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		if r, ok := rs.ranges[s.Name]; ok {
			err := forIntervalChunks(r, func(chunk []nftables.SetElement) error {
				return c.SetAddElements(s, chunk)
			})
			if err != nil {
				return fmt.Errorf("set %s: %w", s.Name, err)
			}
			continue
		}
		if err := addChunked(c, s, rs.elems[s.Name]); err != nil {
			return err
		}
	}
	for _, v6 := range []bool{false, true} {
		if len(carried[v6]) == 0 {
			continue
		}
		s := setByName(rs, setName(setBlocked, v6))
		if err := addChunked(c, s, carried[v6]); err != nil {
			return err
		}
	}
	for _, a := range rs.anon {
		if err := c.AddSet(a.set, a.elems); err != nil {
			return fmt.Errorf("anonymous set: %w", err)
		}
	}
	for _, ch := range rs.chains {
		c.AddChain(ch)
	}
	for _, r := range rs.rules {
		c.AddRule(r)
	}
	return nil
}

func setByName(rs *ruleset, name string) *nftables.Set {
	for _, s := range rs.sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func addChunked(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	for _, chunk := range chunkElements(elems) {
		if err := c.SetAddElements(s, chunk); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
	}
	return nil
}

// applyDiff sends only what changed: admitted ranges as element deletions
// then additions, the small port and management sets flushed and refilled.
func (e *Enforcer) applyDiff(next *spec) error {
	c, err := e.writer()
	if err != nil {
		return err
	}
	rs := next.build()
	changed := false
	for _, v6 := range []bool{false, true} {
		_, oldAdm := e.cur.family(v6)
		_, newAdm := next.family(v6)
		del, add := diffRanges(oldAdm, newAdm)
		s := setByName(rs, setName(setAdmitted, v6))
		if err := forIntervalChunks(del, func(ch []nftables.SetElement) error { return c.SetDeleteElements(s, ch) }); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		if err := forIntervalChunks(add, func(ch []nftables.SetElement) error { return c.SetAddElements(s, ch) }); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		changed = changed || len(del)+len(add) > 0
	}
	for _, v6 := range []bool{false, true} {
		oldM, _ := e.cur.family(v6)
		newM, _ := next.family(v6)
		if slices.Equal(oldM, newM) {
			continue
		}
		s := setByName(rs, setName(setManagement, v6))
		c.FlushSet(s)
		if err := addChunked(c, s, mgmtElements(newM)); err != nil {
			return err
		}
		if s := setByName(rs, setName(setMgmtSrc, v6)); s != nil {
			c.FlushSet(s)
			if err := addChunked(c, s, intervalElements(next.mgmtSources(v6))); err != nil {
				return err
			}
		}
		changed = true
	}
	if !slices.Equal(e.cur.ports, next.ports) {
		s := setByName(rs, setPorts)
		c.FlushSet(s)
		if err := addChunked(c, s, portElements(next.ports)); err != nil {
			return err
		}
		changed = true
	}
	if changed {
		if err := c.Flush(); err != nil {
			return fmt.Errorf("update sets: %w", err)
		}
	}
	e.cur, e.curRS = next, rs
	return nil
}

// Close stops the Enforcer from applying further generations. The table
// stays in force: only Teardown removes it.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	e.dropWriter()
	return nil
}

// Teardown deletes the table inet gatehouse in the namespace netnsFd
// (0: the current one). It is a no-op when the table does not exist, and it
// touches no other table.
func Teardown(netnsFd int) error {
	return teardown(netnsFd, nil)
}

func teardown(netnsFd int, testDial nltest.Func) error {
	c, err := newConn(netnsFd, testDial)
	if err != nil {
		return err
	}
	found, err := tableExists(c)
	if err != nil {
		return fmt.Errorf("teardown: %w", err)
	}
	if !found {
		return nil
	}
	c.DelTable(ourTable())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("teardown: delete table: %w", err)
	}
	return nil
}

func tableExists(c *nftables.Conn) (bool, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}
