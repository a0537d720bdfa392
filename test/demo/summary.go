package main

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
)

// summary is what `gatehouse check --json` and `gatehouse status --json`
// both say of a configuration: its listeners with their routes, its
// tenants and its feeds. Each side is read into it from its own JSON.
type summary struct {
	Listeners []map[string]any
	Tenants   []string
	Feeds     []string
}

// stepSummary runs `check --json` on the demo's configuration and compares
// what it promises with what the running daemon's `status --json` reports:
// the same listeners and routes (every field), tenants and feeds, in order.
func (d *demo) stepSummary(ctx context.Context) (string, error) {
	out, err := d.cmd(ctx, "dmz", d.bin, "check", "--json", "-c", d.config)
	if err != nil {
		return "", err
	}
	var check struct {
		Listeners []map[string]any `json:"listeners"`
		Tenants   []string         `json:"tenants"`
		Feeds     []struct {
			Name string `json:"name"`
		} `json:"feeds"`
	}
	if err := json.Unmarshal([]byte(out), &check); err != nil {
		return "", fmt.Errorf("check --json: %w: %s", err, out)
	}
	if out, err = d.cmd(ctx, "", d.bin, "status", "--json", "-c", d.config); err != nil {
		return "", err
	}
	var status struct {
		Listeners []map[string]any `json:"listeners"`
		Tenants   []struct {
			ID string `json:"id"`
		} `json:"tenants"`
		Feeds []struct {
			Name string `json:"name"`
		} `json:"feeds"`
	}
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		return "", fmt.Errorf("status --json: %w: %s", err, out)
	}
	c := summary{Listeners: check.Listeners, Tenants: check.Tenants}
	for _, f := range check.Feeds {
		c.Feeds = append(c.Feeds, f.Name)
	}
	// Backend health is the daemon's live state, not configuration.
	for _, l := range status.Listeners {
		delete(l, "backend_health")
	}
	s := summary{Listeners: status.Listeners}
	for _, t := range status.Tenants {
		s.Tenants = append(s.Tenants, t.ID)
	}
	for _, f := range status.Feeds {
		s.Feeds = append(s.Feeds, f.Name)
	}
	switch {
	case len(c.Listeners) == 0 || len(c.Tenants) == 0 || len(c.Feeds) == 0:
		return "", fmt.Errorf("check --json describes nothing to compare: %+v", c)
	case !reflect.DeepEqual(s.Listeners, c.Listeners):
		return "", fmt.Errorf("listeners and routes differ:\n  status: %v\n  check:  %v", s.Listeners, c.Listeners)
	case !slices.Equal(s.Tenants, c.Tenants):
		return "", fmt.Errorf("tenants differ: status %v, check %v", s.Tenants, c.Tenants)
	case !slices.Equal(s.Feeds, c.Feeds):
		return "", fmt.Errorf("feeds differ: status %v, check %v", s.Feeds, c.Feeds)
	}
	return fmt.Sprintf("%d routes, tenants %v, feeds %v: the same in both", len(c.Listeners), c.Tenants, c.Feeds), nil
}
