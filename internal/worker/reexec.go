package worker

import (
	"fmt"
	"os"
)

// RunIfWorker makes this process a worker and exits, when it was started
// as one (its only argument "worker", the control socket at ControlFD);
// otherwise it returns at once. A test binary that starts daemons in
// process calls it first in its TestMain: the enforcer starts its workers
// from /proc/self/exe, which is then the test binary.
func RunIfWorker() {
	if len(os.Args) != 2 || os.Args[1] != "worker" {
		return
	}
	if err := Main(os.NewFile(ControlFD, "control"), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gatehouse:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
