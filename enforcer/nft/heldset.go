package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"go4.org/netipx"
)

// ErrApplied is returned by HeldAdmitted once this Enforcer has applied a
// policy: the table then holds this run's generation, not a previous one's.
var ErrApplied = errors.New("nft: a policy was applied; nothing is held from a previous run")

// HeldAdmitted reads the admitted ranges that table inet gatehouse holds
// before this Enforcer applied anything: what a previous run left. The
// daemon keeps them in force (in a generation of its own configuration)
// while a feed has no verified release, instead of replacing them with
// fewer; and it can give the same ranges to the XDP layer and rebuild the
// table with them when it drifts. No table, or empty sets, is nothing
// held: two empty lists. The read is a full dump of both sets, done once at
// start.
func (e *Enforcer) HeldAdmitted() (v4, v6 []netip.Prefix, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, ErrClosed
	}
	if e.cur != nil {
		return nil, nil, ErrApplied
	}
	c, err := e.conn()
	if err != nil {
		return nil, nil, err
	}
	found, err := tableExists(c)
	if err != nil || !found {
		return nil, nil, err
	}
	read := func(v6 bool) ([]netip.Prefix, error) {
		name := setName(setAdmitted, v6)
		elems, err := c.GetSetElements(&nftables.Set{Table: ourTable(), Name: name, Interval: true})
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
		ps, err := intervalPrefixes(elems, v6)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
		return ps, nil
	}
	if v4, err = read(false); err != nil {
		return nil, nil, err
	}
	if v6, err = read(true); err != nil {
		return nil, nil, err
	}
	return v4, v6, nil
}

// intervalPrefixes turns the elements of an interval set (a start element
// at each range's first address, an end element just after its last, none
// for a range that reaches the top of the address space) back into the
// smallest sorted list of prefixes covering the same addresses. The kernel
// may list the elements in any order, and may hold an end element without
// a start (nft marks the space below the first range that way); a start
// that follows a start is malformed.
func intervalPrefixes(elems []nftables.SetElement, v6 bool) ([]netip.Prefix, error) {
	type bound struct {
		addr netip.Addr
		end  bool
	}
	size := 4
	if v6 {
		size = 16
	}
	bounds := make([]bound, 0, len(elems))
	for _, el := range elems {
		a, ok := netip.AddrFromSlice(el.Key)
		if !ok || len(el.Key) != size {
			return nil, fmt.Errorf("element key of %d bytes, want %d", len(el.Key), size)
		}
		bounds = append(bounds, bound{a, el.IntervalEnd})
	}
	// At one address an end (of the range before) comes before a start.
	slices.SortFunc(bounds, func(x, y bound) int {
		if c := x.addr.Compare(y.addr); c != 0 {
			return c
		}
		if x.end == y.end {
			return 0
		}
		if x.end {
			return -1
		}
		return 1
	})
	var b netipx.IPSetBuilder
	var start netip.Addr
	open := false
	for _, bd := range bounds {
		switch {
		case !bd.end && open:
			return nil, fmt.Errorf("range starting at %s starts again at %s before its end", start, bd.addr)
		case !bd.end:
			start, open = bd.addr, true
		case open:
			if bd.addr == start {
				return nil, fmt.Errorf("empty range at %s", start)
			}
			b.AddRange(netipx.IPRangeFrom(start, bd.addr.Prev()))
			open = false
		}
	}
	if open {
		top := netip.AddrFrom4([4]byte{255, 255, 255, 255})
		if v6 {
			top = netipx.PrefixLastIP(netip.MustParsePrefix("::/0"))
		}
		b.AddRange(netipx.IPRangeFrom(start, top))
	}
	set, err := b.IPSet()
	if err != nil {
		return nil, err
	}
	return set.Prefixes(), nil // sorted, merged
}
