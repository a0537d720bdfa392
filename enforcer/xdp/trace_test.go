package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file holds what the differential test needs to read nftables'
// verdict on each packet it puts on the wire (netns.Packet builds them): a
// reader of nftables trace events.

// traceVerdict is nftables' decision on one packet in one base chain.
type traceVerdict struct {
	// accept: accepted, or taken by synproxy (a SYN to a listener port
	// is answered with a cookie, which is how nftables lets it in).
	accept bool
	rule   uint64 // handle of the deciding rule; 0 for the chain policy
}

// tracer reads nftables trace events of one namespace and hands out the
// verdict of table gatehouse per packet marker: a drop in any of its
// chains, or the decision of its input chain.
type tracer struct {
	nl *netlink.Conn
	mu sync.Mutex
	// got holds verdicts by marker until taken; waiters are woken by ch.
	got map[uint32]traceVerdict
	// ids maps a trace id to the marker of its packet: the kernel dumps a
	// packet's headers with the first event of a chain only.
	ids map[uint32]uint32
	ch  chan struct{}
	err error
}

func newTracer(netnsFd int) (*tracer, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, err
	}
	if err := nl.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		nl.Close()
		return nil, err
	}
	tr := &tracer{nl: nl, got: map[uint32]traceVerdict{}, ids: map[uint32]uint32{}, ch: make(chan struct{}, 1)}
	go tr.loop()
	return tr, nil
}

func (tr *tracer) Close() error { return tr.nl.Close() }

func (tr *tracer) loop() {
	for {
		msgs, err := tr.nl.Receive()
		if err != nil {
			tr.mu.Lock()
			tr.err = err
			tr.mu.Unlock()
			tr.wake()
			return
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_TRACE) || len(m.Data) < 4 {
				continue
			}
			ev, ok := parseTrace(m.Data[4:])
			if !ok {
				continue
			}
			tr.mu.Lock()
			if ev.hasMarker {
				tr.ids[ev.id] = ev.marker
			}
			marker, known := tr.ids[ev.id]
			if ev.final && known {
				tr.got[marker] = ev.verdict
				delete(tr.ids, ev.id)
			}
			tr.mu.Unlock()
			if ev.final {
				tr.wake()
			}
		}
	}
}

func (tr *tracer) wake() {
	select {
	case tr.ch <- struct{}{}:
	default:
	}
}

// traceEvent is one trace event of chain input of table gatehouse.
type traceEvent struct {
	id        uint32
	marker    uint32
	hasMarker bool // the event carries the packet's network header
	final     bool // the event is the chain's decision
	verdict   traceVerdict
}

// parseTrace decodes a trace event: the verdict of chain input of table
// gatehouse, or the marker of a packet from any event that dumps its
// headers; ok is false for events with neither.
func parseTrace(b []byte) (ev traceEvent, ok bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ev, false
	}
	ad.ByteOrder = binary.BigEndian
	var table, chain string
	var typ uint32
	var hdr []byte
	var nfproto uint32
	code := int32(-100)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_ID:
			ev.id = ad.Uint32()
		case unix.NFTA_TRACE_TABLE:
			table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			chain = ad.String()
		case unix.NFTA_TRACE_TYPE:
			typ = ad.Uint32()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.verdict.rule = ad.Uint64()
		case unix.NFTA_TRACE_NETWORK_HEADER:
			hdr = ad.Bytes()
		case unix.NFTA_TRACE_NFPROTO:
			nfproto = ad.Uint32()
		case unix.NFTA_TRACE_POLICY:
			code = int32(ad.Uint32())
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() == unix.NFTA_VERDICT_CODE {
						code = int32(nd.Uint32())
					}
				}
				return nil
			})
		}
	}
	if ad.Err() != nil {
		return ev, false
	}
	// The packet's headers come with the first event of a hook, which may
	// be of another chain (the witness, prerouting) than the verdict.
	switch {
	case nfproto == unix.NFPROTO_IPV4 && len(hdr) >= 20:
		ev.marker, ev.hasMarker = uint32(binary.BigEndian.Uint16(hdr[4:])), true
	case nfproto == unix.NFPROTO_IPV6 && len(hdr) >= 40:
		ev.marker, ev.hasMarker = binary.BigEndian.Uint32(hdr[0:])&0xfffff, true
	}
	if table != "gatehouse" || chain != "input" && code != nfDrop {
		// Only a drop is the table's last word wherever it is (the raw
		// prerouting chain, the chain the scan rule jumps to); an
		// accept is only in input.
		return ev, ev.hasMarker
	}
	if typ == unix.NFT_TRACETYPE_RULE || typ == unix.NFT_TRACETYPE_POLICY {
		switch code {
		case nfAccept, nfStolen:
			ev.final, ev.verdict.accept = true, true
		case nfDrop:
			ev.final = true
		}
	}
	return ev, true
}

// Netfilter verdicts (linux/netfilter.h).
const (
	nfDrop   = 0
	nfAccept = 1
	nfStolen = 2
)

var errNoVerdict = errors.New("no nftables verdict")

// wait returns the verdict on the packet with marker, waiting up to d.
func (tr *tracer) wait(marker uint32, d time.Duration) (traceVerdict, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		tr.mu.Lock()
		v, ok := tr.got[marker]
		delete(tr.got, marker)
		err := tr.err
		tr.mu.Unlock()
		if ok {
			return v, nil
		}
		if err != nil {
			return v, fmt.Errorf("trace socket: %w", err)
		}
		select {
		case <-tr.ch:
		case <-deadline.C:
			return v, fmt.Errorf("%w for marker %d within %s", errNoVerdict, marker, d)
		}
	}
}
