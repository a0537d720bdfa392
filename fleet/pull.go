package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Results of one pull, the values of gatehouse_fleet_pulls_total's result.
const (
	ResultOK          = "ok"
	ResultUnreachable = "unreachable" // no connection, TLS refused, or not 200
	ResultBadResponse = "bad_response"
	ResultTooMany     = "too_many"
	ResultBroad       = "broad_prefix"
	ResultApply       = "apply_failed"
)

// Results lists every result, for the metric's zero series.
var Results = []string{ResultOK, ResultUnreachable, ResultBadResponse, ResultTooMany, ResultBroad, ResultApply}

// bytesPerBlock bounds one entry's size on the wire, for the body limit.
const bytesPerBlock = 128

// pullError is a refused pull: its result and why.
type pullError struct {
	result string
	err    error
}

func (e *pullError) Error() string { return e.err.Error() }

func refuse(result string, format string, a ...any) error {
	return &pullError{result: result, err: fmt.Errorf(format, a...)}
}

// pull fetches one peer's blocks and applies them. A peer that cannot be
// reached or sends anything this node does not accept changes nothing: it
// is counted and logged (once per change of result).
func (n *Node) pull(ctx context.Context, base, peer string) {
	blocks, err := n.fetch(ctx, base)
	if err == nil {
		err = n.apply(peer, blocks)
	}
	result := ResultOK
	var pe *pullError
	if errors.As(err, &pe) {
		result = pe.result
	} else if err != nil {
		result = ResultApply
	}
	n.m.pulls.WithLabelValues(peer, result).Inc()
	up := 0.0
	if result != ResultUnreachable {
		up = 1
	}
	n.m.up.WithLabelValues(peer).Set(up)
	if !n.m.noteResult(peer, result) {
		return // said already
	}
	if err != nil {
		n.log.Warn("fleet peer's blocks not taken", "peer", peer, "result", result, "err", err)
	} else {
		n.log.Info("fleet peer reached, its blocks taken", "peer", peer, "blocks", len(blocks))
	}
}

// fetch gets and checks a peer's list whole: nothing of a list with one
// bad entry is used.
func (n *Node) fetch(ctx context.Context, base string) ([]Block, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+Path, nil)
	if err != nil {
		return nil, refuse(ResultUnreachable, "%v", err)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return nil, refuse(ResultUnreachable, "%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, refuse(ResultUnreachable, "status %s", resp.Status)
	}
	limit := int64(n.cfg.MaxBlocks)*bytesPerBlock + 1024
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, refuse(ResultUnreachable, "read: %v", err)
	}
	if int64(len(body)) > limit {
		return nil, refuse(ResultTooMany, "over %d bytes", limit)
	}
	return n.parse(body)
}

// parse checks a list: strict JSON, at most MaxBlocks entries, each a
// canonical prefix no broader than one source of the policy in force, with
// a positive time to live; the time is capped by block_ttl.
func (n *Node) parse(body []byte) ([]Block, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var list wireList
	if err := dec.Decode(&list); err != nil {
		return nil, refuse(ResultBadResponse, "%v", err)
	}
	if dec.More() {
		return nil, refuse(ResultBadResponse, "data after the list")
	}
	if len(list.Blocks) > n.cfg.MaxBlocks {
		return nil, refuse(ResultTooMany, "%d blocks, at most %d", len(list.Blocks), n.cfg.MaxBlocks)
	}
	bits := n.srcBits.Load()
	out := make([]Block, 0, len(list.Blocks))
	for i, wb := range list.Blocks {
		p, err := netip.ParsePrefix(wb.Source)
		if err != nil || p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return nil, refuse(ResultBadResponse, "block %d: %q is not a canonical prefix", i, wb.Source)
		}
		want := bits[0]
		if p.Addr().Is6() {
			want = bits[1]
		}
		if p.Bits() < want {
			return nil, refuse(ResultBroad, "block %d: %s is broader than one source (/%d)", i, p, want)
		}
		if wb.TTLSeconds <= 0 {
			return nil, refuse(ResultBadResponse, "block %d: ttl_seconds %d", i, wb.TTLSeconds)
		}
		ttl := min(time.Duration(min(wb.TTLSeconds, int64(maxTTL/time.Second)))*time.Second, n.cfg.BlockTTL)
		out = append(out, Block{Source: p, Left: ttl})
	}
	return out, nil
}

// apply puts a checked list into the blocklist. A block the peer sent
// before and that still holds here is not counted again.
func (n *Node) apply(peer string, blocks []Block) error {
	now := time.Now()
	n.mu.Lock()
	seen := n.seen[peer]
	if seen == nil {
		seen = map[netip.Prefix]time.Time{}
		n.seen[peer] = seen
	}
	for p, until := range seen {
		if now.After(until) {
			delete(seen, p)
		}
	}
	n.mu.Unlock()
	var errs []error
	fresh := 0
	for _, b := range blocks {
		if err := n.cfg.Apply(b.Source.Addr(), b.Left); err != nil {
			errs = append(errs, err)
			if len(errs) >= 3 {
				break // a full blocklist says the same for every one
			}
			continue
		}
		n.mu.Lock()
		if _, ok := seen[b.Source]; !ok {
			fresh++
			n.log.Info("source blocked for a fleet peer", "peer", peer, "source", b.Source, "for", b.Left)
		}
		seen[b.Source] = now.Add(b.Left)
		n.mu.Unlock()
	}
	n.m.received.WithLabelValues(peer).Add(float64(fresh))
	return errors.Join(errs...)
}
