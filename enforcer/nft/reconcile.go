package nft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Run repairs drift every reconcile interval and watches the blocked sets
// until ctx ends or the Enforcer is closed; both return nil.
func (e *Enforcer) Run(ctx context.Context) error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil
	}
	recon := time.NewTicker(e.every)
	defer recon.Stop()
	poll := time.NewTicker(e.pollGap)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recon.C:
			if stop := e.report(e.Reconcile(), slog.LevelError, "reconcile failed"); stop {
				return nil
			}
		case <-poll.C:
			if stop := e.report(e.PollBlocked(), slog.LevelWarn, "reading blocked sets failed"); stop {
				return nil
			}
		}
	}
}

// Reconcile checks the table once and rebuilds it when it was deleted or
// edited. The check is cheap when nothing in the namespace's ruleset changed
// (one generation read); otherwise it reads the table's chains, rules, set
// headers, counters and the small sets, never the admitted sets. It reports
// whether it repaired something through the drift counter.
func (e *Enforcer) Reconcile() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.ready(); err != nil {
		return err
	}
	gen, err := e.generation()
	if err != nil {
		return err
	}
	if gen == e.lastGen && gen != 0 {
		return nil
	}
	c, err := e.conn()
	if err != nil {
		return err
	}
	reason, err := e.drift(c)
	if err != nil {
		return err
	}
	if reason == "" {
		e.lastGen = gen
		return nil
	}
	e.log.Warn("table drifted, rebuilding", "reason", reason)
	if err := e.applyFull(e.cur); err != nil {
		e.dropWriter()
		return fmt.Errorf("repair: %w", err)
	}
	e.metrics.drift.Inc()
	return nil
}

// drift compares the kernel's table with the last generation and returns
// what differs, or "" when it matches.
func (e *Enforcer) drift(c *nftables.Conn) (string, error) {
	rs := e.curRS
	found, err := tableExists(c)
	if err != nil {
		return "", err
	}
	if !found {
		return "table missing", nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains: %w", err)
	}
	var ours []*nftables.Chain
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			ours = append(ours, ch)
		}
	}
	if len(ours) != len(rs.chains) {
		return fmt.Sprintf("chains changed (%d in table, want %d)", len(ours), len(rs.chains)), nil
	}
	for _, want := range rs.chains {
		i := slices.IndexFunc(ours, func(ch *nftables.Chain) bool { return ch.Name == want.Name })
		if i < 0 {
			return "chain " + want.Name + " missing", nil
		}
		if !sameHook(ours[i], want) {
			return "chain " + want.Name + " changed", nil
		}
		rules, err := c.GetRules(rs.table, want)
		if err != nil {
			return "", fmt.Errorf("list rules of %s: %w", want.Name, err)
		}
		// The rules of one chain are a run of rs.rules; their tags hash
		// their position in the whole table.
		first := slices.IndexFunc(rs.rules, func(r *nftables.Rule) bool { return r.Chain == want })
		n := 0
		for _, r := range rs.rules {
			if r.Chain == want {
				n++
			}
		}
		if len(rules) != n {
			return fmt.Sprintf("%s: %d rules, want %d", want.Name, len(rules), n), nil
		}
		for j, r := range rules {
			if !bytes.Equal(userdata.Get(r.UserData, tagType), rs.tags[first+j]) {
				return fmt.Sprintf("%s: rule %d (handle %d) changed", want.Name, j, r.Handle), nil
			}
		}
	}
	sets, err := c.GetSets(rs.table)
	if err != nil {
		return "", fmt.Errorf("list sets: %w", err)
	}
	var names []string
	for _, s := range sets {
		if !s.Anonymous {
			names = append(names, s.Name)
		}
	}
	var want []string
	for _, s := range rs.sets {
		want = append(want, s.Name)
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		return fmt.Sprintf("sets %v, want %v", names, want), nil
	}
	objs, err := c.GetNamedObjects(rs.table)
	if err != nil {
		return "", fmt.Errorf("list counters: %w", err)
	}
	var counters []string
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok && no.Type == nftables.ObjTypeCounter {
			counters = append(counters, no.Name)
		}
	}
	slices.Sort(counters)
	wantCounters := slices.Sorted(slices.Values(rs.counters))
	if !slices.Equal(counters, wantCounters) {
		return "counters changed", nil
	}
	for _, name := range []string{setPorts, setName(setManagement, false), setName(setManagement, true),
		setName(setMgmtSrc, false), setName(setMgmtSrc, true)} {
		s := setByName(rs, name)
		if s == nil {
			continue // management_sources_* exist with scan detection only
		}
		got, err := c.GetSetElements(s)
		if err != nil {
			return "", fmt.Errorf("read set %s: %w", name, err)
		}
		if !sameKeys(got, rs.elems[name]) {
			return "elements of " + name + " changed", nil
		}
	}
	if e.testDial != nil {
		return "", nil
	}
	for _, v6 := range []bool{false, true} {
		name := setName(setAdmitted, v6)
		reason, err := e.spotCheck(name, rs.ranges[name])
		if reason != "" || err != nil {
			return reason, err
		}
	}
	return "", nil
}

// sameHook reports whether a chain in the kernel has the hook, priority
// and policy of the one we want, or like it is a regular chain.
func sameHook(ch, want *nftables.Chain) bool {
	if want.Hooknum == nil {
		return ch.Hooknum == nil
	}
	return ch.Hooknum != nil && *ch.Hooknum == *want.Hooknum && ch.Priority != nil &&
		*ch.Priority == *want.Priority && ch.Policy != nil && *ch.Policy == *want.Policy
}

// sameKeys compares element keys regardless of order.
func sameKeys(got, want []nftables.SetElement) bool {
	if len(got) != len(want) {
		return false
	}
	key := func(el nftables.SetElement) string {
		return string(el.Key) + "|" + string(el.KeyEnd) + fmt.Sprint(el.IntervalEnd)
	}
	g := make([]string, len(got))
	w := make([]string, len(want))
	for i := range got {
		g[i], w[i] = key(got[i]), key(want[i])
	}
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

// report logs a failed periodic check at level, and reports whether the
// loop should stop (the Enforcer is closed).
func (e *Enforcer) report(err error, level slog.Level, msg string) bool {
	switch {
	case errors.Is(err, ErrClosed):
		return true
	case err != nil && !errors.Is(err, ErrNoPolicy):
		e.log.Log(context.Background(), level, msg, "err", err)
	}
	return false
}

// ready is the guard of the periodic checks; the caller holds e.mu.
func (e *Enforcer) ready() error {
	if e.closed {
		return ErrClosed
	}
	if e.cur == nil {
		return ErrNoPolicy
	}
	return nil
}

// rawConn dials a plain netfilter socket in our namespace, for the
// messages google/nftables has no call for.
func (e *Enforcer) rawConn() (*netlink.Conn, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: e.netns})
	if err != nil {
		return nil, fmt.Errorf("netlink dial: %w", err)
	}
	if err := nl.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		nl.Close()
		return nil, err
	}
	return nl, nil
}

// generation reads the ruleset generation of the namespace; it changes with
// every committed batch, ours or anyone's.
func (e *Enforcer) generation() (uint32, error) {
	if e.testDial != nil {
		return 0, nil
	}
	nl, err := e.rawConn()
	if err != nil {
		return 0, err
	}
	defer nl.Close()
	msgs, err := nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("read generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("read generation: no generation in reply")
}
