package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/worker"
)

// newWorkerCmd is the proxy worker the daemon starts under
// enforcement.privsep: hidden, it is not for people. Its control socket is
// descriptor 3; everything else it is told there.
func newWorkerCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "worker",
		Short:  "A privilege-separated proxy worker (started by gatehouse run)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return worker.Main(os.NewFile(worker.ControlFD, "control"), g.stdout, g.stderr)
		},
	}
}
