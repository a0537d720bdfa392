package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/announce"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// bgpPoll is how often the speaker compares what it announces with
// NotReady. Readiness changes in many places (a reload, a feed, an XDP
// filter detached), and NotReady is cheap, so it is asked rather than told.
const bgpPoll = 200 * time.Millisecond

// BGPStatus is what status shows of the speaker.
type BGPStatus struct {
	LocalAS   uint32             `json:"local_as"`
	Sessions  []announce.Session `json:"sessions"`
	Announced []string           `json:"announced"`
	Withdrawn []string           `json:"withdrawn"`
}

func speakerConfig(b config.BGP) announce.Config {
	c := announce.Config{LocalAS: b.LocalAS, Prefixes: b.Prefixes(), Communities: b.CommunityValues()}
	c.RouterID, _ = netip.ParseAddr(b.RouterID) // validated
	for _, n := range b.Neighbors {
		a, _ := netip.ParseAddr(n.Address)
		c.Neighbors = append(c.Neighbors, announce.Neighbor{Address: a, AS: n.AS, Password: n.Password})
	}
	return c
}

// startBGP starts the speaker, once the first generation is in force:
// nothing can be announced before.
func (d *Daemon) startBGP(ctx context.Context, b config.BGP) error {
	if !b.Enabled() {
		return nil
	}
	sp, err := announce.New(ctx, speakerConfig(b), d.opts.Logger)
	if err != nil {
		return err
	}
	d.bgp = sp
	d.reg.MustRegister(sp.Collector())
	return nil
}

// runBGP announces while the daemon is ready and withdraws when it is not,
// until ctx ends; the shutdown path withdraws for good (stopBGP).
func (d *Daemon) runBGP(ctx context.Context) error {
	if d.bgp == nil {
		return nil
	}
	t := time.NewTicker(bgpPoll)
	defer t.Stop()
	announced := false
	for {
		why := d.NotReady()
		if ready := len(why) == 0; ready != announced {
			if err := d.bgp.Announce(ctx, ready); err != nil {
				// Retried at the next tick; the speaker keeps what it could do.
				d.log.Error("bgp: announcement change failed", "ready", ready, "err", err)
			} else {
				announced = ready
				if ready {
					d.log.Info("bgp: ready: service addresses announced")
				} else {
					d.log.Warn("bgp: not ready: service addresses withdrawn", "reason", strings.Join(why, "; "))
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// stopBGP withdraws the service addresses for good and, if they were
// announced, waits bgp.drain.withdraw_wait while the node still serves, so
// the routers move new flows elsewhere before the sessions drain.
func (d *Daemon) stopBGP() error {
	if d.bgp == nil {
		return nil
	}
	had, err := d.bgp.Stop(context.Background())
	if err != nil {
		return fmt.Errorf("bgp: withdraw: %w", err)
	}
	if wait := d.cfg.Load().BGP.Drain.WithdrawWait; had && wait > 0 {
		d.log.Info("stopping: service addresses withdrawn; serving on while the routers move", "withdraw_wait", wait)
		time.Sleep(wait)
	}
	return nil
}

func (d *Daemon) bgpStatus() *BGPStatus {
	if d.bgp == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st := &BGPStatus{LocalAS: d.cfg.Load().BGP.LocalAS, Sessions: d.bgp.Sessions(ctx)}
	on := map[netip.Prefix]bool{}
	for _, p := range d.bgp.Announced() {
		on[p] = true
		st.Announced = append(st.Announced, p.String())
	}
	for _, p := range d.cfg.Load().BGP.Prefixes() {
		if !on[p] {
			st.Withdrawn = append(st.Withdrawn, p.String())
		}
	}
	return st
}
