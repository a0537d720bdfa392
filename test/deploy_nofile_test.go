package test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// TestDeployUnitDescriptorLimit: the unit's LimitNOFILE fits the example
// configuration at its limits (proxy.DescriptorsNeeded: client and backend
// connections, HTTP requests in flight and idle backend connections) and
// the default limits.connections on as many listeners again, with the
// proxy's descriptor reserve on top; and the unit says how it was sized,
// right above the line.
func TestDeployUnitDescriptorLimit(t *testing.T) {
	unit := string(readDeployFile(t, "gatehouse.service"))
	loc := regexp.MustCompile(`(?m)^LimitNOFILE=(\d+)$`).FindStringSubmatchIndex(unit)
	if loc == nil {
		t.Fatal("gatehouse.service sets no numeric LimitNOFILE=")
	}
	limit, err := strconv.Atoi(unit[loc[2]:loc[3]])
	if err != nil {
		t.Fatal(err)
	}
	above := strings.Split(strings.TrimRight(unit[:loc[0]], "\n"), "\n")
	var comment []string
	for i := len(above) - 1; i >= 0 && strings.HasPrefix(above[i], "#"); i-- {
		comment = append(comment, above[i])
	}
	if text := strings.ToLower(strings.Join(comment, " ")); !strings.Contains(text, "descriptor") || !strings.Contains(text, "reserve") {
		t.Errorf("LimitNOFILE=%d has no comment saying how it fits the connection limits and the reserve", limit)
	}

	pol := parseExampleWithFiles(t).Policy()
	need := proxy.DescriptorsNeeded(pol)
	def := *config.Defaults().Limits.Connections
	need += 2 * def * len(pol.Listeners)
	if reserve := proxy.DescriptorReserve(limit); need+reserve > limit {
		t.Errorf("LimitNOFILE=%d: the example's %d listeners at their limits, and as many at the default %d connections, "+
			"need %d descriptors and the reserve %d more", limit, len(pol.Listeners), def, need, reserve)
	}
}
