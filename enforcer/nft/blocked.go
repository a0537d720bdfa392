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

// Block puts the source of addr (addr masked to the source prefix of the
// policy in force) into the blocked set for d, as the scan rule does: the
// XDP layer calls it for the scanners it caught, so that nftables drops
// them on every interface and gatehouse_nft_blocked_sources counts them.
// Every source is taken, one that holds a management range too: the input
// chain accepts management ports before it reads the blocked sets. A
// source blocked already is left as it is, without a
// netlink message. A full set gives an error wrapping
// policy.ErrBlocklistFull.
func (e *Enforcer) Block(addr netip.Addr, d time.Duration) error {
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
	if known, ok := e.blocked[src]; ok && !known.Before(until.Add(-time.Second)) {
		return nil
	}
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
	e.blocked[src] = until
	e.count[b2i(v6)]++
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// PollBlocked reads the blocked sets, updates the blocked-sources gauges
// and calls OnBlock for every source not seen blocked before.
func (e *Enforcer) PollBlocked() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.ready(); err != nil {
		return err
	}
	c, err := e.conn()
	if err != nil {
		return err
	}
	now := time.Now()
	seen := map[netip.Addr]bool{}
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
			if until, known := e.blocked[addr]; known && now.Before(until) {
				continue
			}
			left := el.Expires
			source := netip.PrefixFrom(addr, e.cur.srcBits(v6))
			if e.onBlock != nil {
				if err := e.onBlock(addr, left); err != nil {
					e.log.Error("pushing blocked source failed", "source", source, "err", err)
					continue
				}
			}
			e.log.Warn("scanner blocked", "source", source, "for", left)
			e.blocked[addr] = now.Add(left)
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
	return errors.Join(errs...)
}

func family(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}
