package main

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gatehouse-dmz/gatehouse/fleet"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// lookupEnv is the environment the configuration is read with: the
// process's, with --node-config standing for GATEHOUSE_NODE_CONFIG.
func (g *globals) lookupEnv(key string) (string, bool) {
	if key == config.NodeConfigEnv && g.nodeConfig != "" {
		return g.nodeConfig, true
	}
	return os.LookupEnv(key)
}

// printSources says, before check's summary, which keys a node overlay or
// the environment set over the shared file.
func printSources(w io.Writer, cfg *config.Config) {
	if f := cfg.NodeConfig(); f != "" {
		fmt.Fprintf(w, "node config %s sets: %s\n", f, orNone(cfg.FromNode()))
	}
	if keys := cfg.FromEnv(); len(keys) > 0 {
		fmt.Fprintf(w, "environment (%s_…) sets: %s\n", config.EnvPrefix, strings.Join(keys, ", "))
	}
}

func orNone(keys []string) string {
	if len(keys) == 0 {
		return "nothing"
	}
	return strings.Join(keys, ", ")
}

// printMerged writes the merged configuration as YAML, each key that the
// node overlay or the environment set marked so.
func printMerged(w io.Writer, path string, cfg *config.Config) error {
	var doc yaml.Node
	if err := doc.Encode(cfg.Merged()); err != nil {
		return err
	}
	from := map[string]string{}
	if f := cfg.NodeConfig(); f != "" {
		for _, k := range cfg.FromNode() {
			from[k] = "from node config " + f
		}
	}
	for _, k := range cfg.FromEnv() {
		from[k] = "from " + config.EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
	}
	markSources(&doc, "", from)
	fmt.Fprintf(w, "# configuration %s as run uses it: file over the embedded default, then the node config, then the environment\n", path)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return err
	}
	return enc.Close()
}

// markSources puts a line comment on every mapping key whose dotted path
// is in from.
func markSources(n *yaml.Node, prefix string, from map[string]string) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := prefix + n.Content[i].Value
		if c, ok := from[key]; ok {
			n.Content[i].LineComment = c
		}
		markSources(n.Content[i+1], key+".", from)
	}
}

// checkFleet loads the fleet's certificate, key and peer CA as run does,
// so that a file run would refuse fails check too.
func checkFleet(cfg *config.Config) error {
	f := cfg.Fleet
	if !f.Enabled() {
		return nil
	}
	_, err := fleet.New(fleet.Config{Cert: f.Cert, Key: f.Key, PeerCA: f.PeerCA, Peers: f.Peers,
		PullInterval: f.PullInterval, BlockTTL: f.BlockTTL, MaxBlocks: f.MaxBlocks,
		Local: func() []fleet.Block { return nil }, Apply: func(netip.Addr, time.Duration) error { return nil }})
	if err != nil {
		return fmt.Errorf("fleet: %w", err) // as run names it
	}
	return nil
}
