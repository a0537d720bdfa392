package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// The blocked sets: what scan detection put there, carried over table
// replacements, handed to the XDP layer, and taken from it.

// mirrorBudget is how many blocks one poll hands to OnBlock at most.
const mirrorBudget = 1024

// logSample is how many sources a summary line names.
const logSample = 5

// blockState is what the Enforcer knows of one source in its blocked sets.
type blockState struct {
	until time.Time
	// mirrored: OnBlock took it, or it came in through Block; it is not
	// handed over again.
	mirrored bool
	// peer: another node of the fleet learned it (BlockFromPeer); it is
	// not served to the fleet again (LocalBlocks), so blocks never loop.
	peer bool
}

// readBlocked reads the blocked sets of an existing table, to carry their
// sources over a table replacement into next. A missing table gives
// nothing. Each source is keyed as next keys sources: a coarser source
// prefix widens a block to its new source, a finer one keeps only the
// block of the source's first address.
func (e *Enforcer) readBlocked(c *nftables.Conn, next *spec) (map[bool][]nftables.SetElement, error) {
	out := map[bool][]nftables.SetElement{}
	var errs []error
	for _, v6 := range []bool{false, true} {
		elems, err := c.GetSetElements(&nftables.Set{Table: ourTable(), Name: setName(setBlocked, v6)})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen := map[netip.Addr]bool{}
		for _, el := range elems {
			addr, ok := netip.AddrFromSlice(el.Key)
			if el.Expires <= 0 || !ok {
				continue
			}
			src := next.sourceOf(addr)
			if seen[src] {
				continue
			}
			seen[src] = true
			out[v6] = append(out[v6], nftables.SetElement{Key: src.AsSlice(), Timeout: el.Expires})
		}
	}
	return out, errors.Join(errs...)
}

// remember notes the sources carried into a new table. At the first Apply
// they are a previous run's: handed to OnBlock once more, without a log
// line each. After that they are known already (a coarser source prefix
// only merged them, and the XDP layer keys its own blocks alike).
func (e *Enforcer) remember(carried map[bool][]nftables.SetElement, first bool) {
	now := time.Now()
	n := 0
	for _, elems := range carried {
		for _, el := range elems {
			src, _ := netip.AddrFromSlice(el.Key)
			if _, ok := e.blocked[src]; ok {
				continue
			}
			e.blocked[src] = blockState{until: now.Add(el.Timeout), mirrored: !first}
			n++
		}
	}
	if first && n > 0 {
		e.log.Info("sources still blocked from before the restart", "count", n)
	}
}

// Block puts the source of addr (addr masked to the source prefix of the
// policy in force) into the blocked set for d, as the scan rule does: the
// XDP layer calls it for the scanners it caught, so that nftables drops
// them on every interface and gatehouse_nft_blocked_sources counts them.
// Every source is taken, one that holds a management range too: the input
// chain accepts management ports before it reads the blocked sets. A
// source blocked already is left as it is, without a netlink message. A
// full set gives an error wrapping policy.ErrBlocklistFull.
func (e *Enforcer) Block(addr netip.Addr, d time.Duration) error {
	return e.block(addr, d, false)
}

// BlockFromPeer is Block for a source another node of the fleet blocked:
// the same set, so the same rules (established flows, management ports
// and admitted sources on listener ports are decided before it), but it
// is not listed by LocalBlocks. A source blocked already is left as it is.
func (e *Enforcer) BlockFromPeer(addr netip.Addr, d time.Duration) error {
	return e.block(addr, d, true)
}

// LocalBlock is a source this node's scan detection blocked, and how long
// it stays blocked.
type LocalBlock struct {
	Source netip.Prefix
	Left   time.Duration
}

// LocalBlocks lists the sources this node blocked itself (its scan rule or
// its XDP layer) at the last poll, without those from peers.
func (e *Enforcer) LocalBlocks() []LocalBlock {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == nil {
		return nil
	}
	now := time.Now()
	var out []LocalBlock
	for src, st := range e.blocked {
		if st.peer || !st.until.After(now) {
			continue
		}
		out = append(out, LocalBlock{Source: netip.PrefixFrom(src, e.cur.srcBits(src.Is6())), Left: st.until.Sub(now)})
	}
	return out
}

func (e *Enforcer) block(addr netip.Addr, d time.Duration, peer bool) error {
	if !addr.IsValid() || d < time.Millisecond {
		return fmt.Errorf("%w: block %s for %s", errBadPolicy, addr, d)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.ready(); err != nil {
		return err
	}
	src := e.cur.sourceOf(addr)
	until := time.Now().Add(d)
	st, known := e.blocked[src]
	if known && !st.until.Before(until.Add(-time.Second)) {
		return nil
	}
	// A block this node learned stays its own when a peer extends it.
	peer = peer && (!known || st.peer)
	v6 := src.Is6()
	if e.count[b2i(v6)] >= dynamicSetSize {
		return fmt.Errorf("block %s: %s: %w", src, setName(setBlocked, v6), policy.ErrBlocklistFull)
	}
	c, err := e.writer()
	if err != nil {
		return err
	}
	set := &nftables.Set{Table: ourTable(), Name: setName(setBlocked, v6), KeyType: nftables.TypeIPAddr}
	if v6 {
		set.KeyType = nftables.TypeIP6Addr
	}
	err = c.SetAddElements(set, []nftables.SetElement{{Key: src.AsSlice(), Timeout: d}})
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		e.dropWriter()
		if errors.Is(err, unix.ENFILE) {
			e.count[b2i(v6)] = dynamicSetSize
			err = fmt.Errorf("%w: %w", policy.ErrBlocklistFull, err)
		}
		return fmt.Errorf("block %s: %w", src, err)
	}
	// Known: the poll must not hand it back to the layer it came from.
	e.blocked[src] = blockState{until: until, mirrored: true, peer: peer}
	e.count[b2i(v6)]++
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pendingBlock is a block the poll hands to OnBlock.
type pendingBlock struct {
	src  netip.Addr
	left time.Duration
}

// PollBlocked reads the blocked sets, updates the blocked-sources gauges,
// logs the sources the scan rule newly blocked (one summary line, a line
// per source at debug) and calls OnBlock for those not handed over yet, at
// most mirrorBudget a poll.
func (e *Enforcer) PollBlocked() error {
	e.mu.Lock()
	if err := e.ready(); err != nil {
		e.mu.Unlock()
		return err
	}
	c, err := e.conn()
	if err != nil {
		e.mu.Unlock()
		return err
	}
	now := time.Now()
	seen := map[netip.Addr]bool{}
	var fresh []netip.Prefix
	var pending []pendingBlock
	var errs []error
	for _, v6 := range []bool{false, true} {
		elems, err := c.GetSetElements(&nftables.Set{Table: ourTable(), Name: setName(setBlocked, v6)})
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", setName(setBlocked, v6), err))
			continue
		}
		e.count[b2i(v6)] = len(elems)
		e.metrics.fill.WithLabelValues(family(v6)).Set(float64(len(elems)) / dynamicSetSize)
		for _, el := range elems {
			addr, ok := netip.AddrFromSlice(el.Key)
			if !ok {
				continue
			}
			seen[addr] = true
			st, known := e.blocked[addr]
			if !known || now.After(st.until) {
				fresh = append(fresh, netip.PrefixFrom(addr, e.cur.srcBits(v6)))
				st = blockState{until: now.Add(el.Expires)}
			}
			st.until = now.Add(el.Expires)
			e.blocked[addr] = st
			if !st.mirrored && e.onBlock != nil && len(pending) < mirrorBudget {
				pending = append(pending, pendingBlock{addr, el.Expires})
			}
		}
	}
	if len(errs) == 0 {
		for a := range e.blocked {
			if !seen[a] {
				delete(e.blocked, a)
			}
		}
		e.metrics.blockedSources.Set(float64(len(seen)))
	}
	e.mu.Unlock()

	if len(fresh) > 0 {
		var sample []string
		for i, src := range fresh {
			if i < logSample {
				sample = append(sample, src.String())
			}
			e.log.Debug("scanner blocked", "source", src)
		}
		e.log.Warn("scanners blocked", "count", len(fresh), "sources", sample)
	}
	// OnBlock takes the XDP layer's lock: it is called without this one,
	// as the XDP layer calls Block without its own.
	for _, b := range pending {
		if err := e.onBlock(b.src, b.left); err != nil {
			errs = append(errs, fmt.Errorf("hand %s to the XDP layer: %w", b.src, err))
			continue
		}
		e.mu.Lock()
		if st, ok := e.blocked[b.src]; ok {
			st.mirrored = true
			e.blocked[b.src] = st
		}
		e.mu.Unlock()
	}
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

func family(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}
