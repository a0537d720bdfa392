package config

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/viper"
)

// NodeConfigEnv names the node-local overlay file: a fleet shares one
// configuration file, and each node's own keys come from this small file
// (gatehouse --node-config sets it too).
const NodeConfigEnv = EnvPrefix + "_NODE_CONFIG"

// NodeKeys are the only keys a node-local overlay may set: what tells one
// node of a fleet from another (its interface, its metrics address on the
// management network, its BGP router id, its fleet address and certificate). Everything else (tenants,
// listeners, feeds, enforcement, limits, TLS) is the fleet's policy and
// must be the same on every node, or one node would admit what another
// drops; an overlay that sets such a key is refused with the key's path.
var NodeKeys = []string{
	"interface",
	"metrics.listen",
	"bgp.router_id",
	"fleet.listen",
	"fleet.cert",
	"fleet.key",
}

// sources records which keys came from the node overlay and which from
// the environment, for gatehouse check.
type sources struct {
	nodeFile string
	node     []string
	env      []string
	merged   map[string]any // the whole tree as decoded
}

// NodeConfig is the node overlay file that was applied, "" for none.
func (c *Config) NodeConfig() string { return c.sources.nodeFile }

// FromNode lists the keys the node overlay set, sorted.
func (c *Config) FromNode() []string { return slices.Clone(c.sources.node) }

// FromEnv lists the keys a GATEHOUSE_… variable set, sorted; they win over
// the file and the overlay.
func (c *Config) FromEnv() []string { return slices.Clone(c.sources.env) }

// Merged is the configuration as decoded, every key: the embedded default,
// the file, the node overlay and the environment, merged.
func (c *Config) Merged() map[string]any { return c.sources.merged }

// applyNode merges the overlay named by NodeConfigEnv into v: over the
// shared file, under the environment. A key outside NodeKeys is a problem
// and is not applied.
func applyNode(v *viper.Viper, env func(string) (string, bool), src *sources) Problems {
	path, ok := env(NodeConfigEnv)
	if !ok || path == "" {
		return nil
	}
	src.nodeFile = path
	data, err := os.ReadFile(path)
	if err != nil {
		return Problems{{"", fmt.Sprintf("node config: %v", err)}}
	}
	node := viper.New()
	node.SetConfigType("yaml")
	if err := node.ReadConfig(bytes.NewReader(data)); err != nil {
		return Problems{{"", fmt.Sprintf("node config %s: %v", path, err)}}
	}
	var problems Problems
	keys := node.AllKeys()
	slices.Sort(keys)
	for _, key := range keys {
		if !slices.Contains(NodeKeys, key) {
			problems = append(problems, Problem{key, fmt.Sprintf("set in node config %s, which may set only %s: every other key is the fleet's, in the shared file",
				path, strings.Join(NodeKeys, ", "))})
			continue
		}
		v.Set(key, node.Get(key))
		src.node = append(src.node, key)
	}
	return problems
}

// envKeys lists the keys for which a GATEHOUSE_… variable is set.
func envKeys(v *viper.Viper, env func(string) (string, bool)) []string {
	var keys []string
	for _, key := range v.AllKeys() {
		if _, ok := env(EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))); ok {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys
}
