package fleet

import "time"

// Status is what `gatehouse status` shows of the fleet: this node's own
// blocks served and each peer's last pull.
type Status struct {
	Listen string `json:"listen,omitempty"` // "" serves nothing
	// Served is how many blocks this node listed at the last peer's pull,
	// LastServed when (zero: no peer has pulled yet).
	Served     int          `json:"served"`
	LastServed time.Time    `json:"last_served,omitzero"`
	Peers      []PeerStatus `json:"peers"`
}

// PeerStatus is one peer as this node's pulls see it.
type PeerStatus struct {
	Peer string `json:"peer"` // host:port, as the metrics' peer label
	// Up is the last pull's reach (its list may still have been refused,
	// see Result); false before the first pull ends.
	Up bool `json:"up"`
	// LastPull is when the last pull ended, zero before the first.
	LastPull time.Time `json:"last_pull,omitzero"`
	Result   string    `json:"result,omitempty"` // the last pull's, as gatehouse_fleet_pulls_total's
	Error    string    `json:"error,omitempty"`  // why, when Result is not ok
	// Received counts the sources this peer blocked that this node blocked
	// in turn since it started; Holding is how many of them still hold.
	Received uint64 `json:"received"`
	Holding  int    `json:"holding"`
}

// peerState is what the pulls record of one peer for Status.
type peerState struct {
	last     time.Time
	result   string
	err      string
	received uint64
}

// note records one pull's end.
func (m *metrics) note(peer, result string, err error, fresh int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.state[peer]
	st.last, st.result, st.err = time.Now(), result, ""
	if err != nil {
		st.err = err.Error()
	}
	st.received += uint64(fresh)
	m.state[peer] = st
}

// noteServed records a peer's pull of this node's blocks.
func (m *metrics) noteServed(n int) {
	m.mu.Lock()
	m.servedN, m.servedAt = n, time.Now()
	m.mu.Unlock()
}

// Status reports the fleet as the last pulls saw it, the peers in their
// configured order.
func (n *Node) Status() Status {
	now := time.Now()
	holding := map[string]int{}
	n.mu.Lock()
	for peer, seen := range n.seen {
		for _, until := range seen {
			if until.After(now) {
				holding[peer]++
			}
		}
	}
	n.mu.Unlock()
	m := n.m
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Listen: n.cfg.Listen, Served: m.servedN, LastServed: m.servedAt, Peers: make([]PeerStatus, 0, len(m.peers))}
	for _, p := range m.peers {
		ps := m.state[p]
		st.Peers = append(st.Peers, PeerStatus{Peer: p, Up: ps.result != "" && ps.result != ResultUnreachable, LastPull: ps.last,
			Result: ps.result, Error: ps.err, Received: ps.received, Holding: holding[p]})
	}
	return st
}
