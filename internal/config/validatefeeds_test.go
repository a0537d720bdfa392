package config

import (
	"errors"
	"strings"
	"testing"
)

// TestReservedFeedNames: a feed named like an admitted source that is not
// a feed (static, all) is a problem of the configuration, with its key
// path, listed with the others (so check shows it among them).
func TestReservedFeedNames(t *testing.T) {
	for _, name := range []string{"static", "all"} {
		yaml := strings.Replace(goodYAML, "static_ranges:", `feeds:
  - {name: `+name+`, source: "file:///srv/feed/manifest.json", format: cidr, minisign_keys: ["RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"], threshold: 1, refresh: 15m}
static_ranges:`, 1)
		yaml = strings.Replace(yaml, "mode: strict", "mode: paranoid", 1) // and another problem beside it
		_, err := parse(t, yaml, nil)
		var ps Problems
		if !errors.As(err, &ps) || len(ps) != 2 || !strings.Contains(err.Error(), `feeds[0].name: "`+name+`" is reserved`) {
			t.Errorf("feed named %q: %v, want two problems, one naming feeds[0].name", name, err)
		}
	}
}

// TestReservedTenantIDs: a tenant named like the label of traffic that
// proved no tenant is refused with the reason, at its key path, beside the
// other problems; its routes are not reported as naming an unknown tenant.
func TestReservedTenantIDs(t *testing.T) {
	for _, id := range []string{"unknown", "none", "-"} {
		yaml := strings.Replace(goodYAML, "id: globex", "id: \""+id+"\"", 1)
		yaml = strings.Replace(yaml, "{tenant: globex,", "{tenant: \""+id+"\",", -1)
		yaml = strings.Replace(yaml, "mode: strict", "mode: paranoid", 1)
		_, err := parse(t, yaml, nil)
		var ps Problems
		if !errors.As(err, &ps) || len(ps) != 2 || !strings.Contains(err.Error(), `tenants[1].id: "`+id+`" is reserved: it is the tenant label of`) {
			t.Errorf("tenant %q: %v, want two problems, one naming tenants[1].id as reserved", id, err)
		}
	}
}
