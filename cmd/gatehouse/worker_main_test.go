package main

import (
	"os"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/worker"
)

// TestMain lets this test binary be the proxy workers of the daemons its
// tests run in process: with enforcement.privsep on, the enforcer starts
// them from /proc/self/exe.
func TestMain(m *testing.M) {
	worker.RunIfWorker()
	os.Exit(m.Run())
}
