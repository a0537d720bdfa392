package daemon

import (
	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/fleet"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// buildFleet shares the nftables blocklist with the fleet's peers: the
// blocks this node learned are served, the peers' go in through
// BlockFromPeer, so that they keep the rules of a local block.
func buildFleet(env *Env, ne *nft.Enforcer) (*layer, error) {
	f := env.Config.Fleet
	node, err := fleet.New(fleet.Config{
		Logger: env.Logger, Listen: f.Listen, Cert: f.Cert, Key: f.Key, PeerCA: f.PeerCA, Peers: f.Peers,
		PullInterval: f.PullInterval, BlockTTL: f.BlockTTL, MaxBlocks: f.MaxBlocks,
		Local: func() []fleet.Block {
			local := ne.LocalBlocks()
			out := make([]fleet.Block, len(local))
			for i, b := range local {
				out[i] = fleet.Block{Source: b.Source, Left: b.Left}
			}
			return out
		},
		Apply: ne.BlockFromPeer,
	})
	if err != nil {
		return nil, err
	}
	if err := register(env, "fleet", node); err != nil {
		return nil, err
	}
	return &layer{name: "fleet", rangeBlind: true,
		apply: func(p *policy.Policy) error {
			node.SetSourceBits(p.Enforcement.SourcePrefix.V4, p.Enforcement.SourcePrefix.V6)
			return nil
		},
		close: func() error { return nil },
		run:   node.Run,
	}, nil
}
