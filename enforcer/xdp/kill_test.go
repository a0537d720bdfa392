package xdp

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// The test binary doubles as a daemon stand-in: with GATEHOUSE_XDP_DAEMON
// set to "<interface>,<pin dir>", it attaches, applies the test policy, says
// "ready" and waits to be killed.
const daemonEnv = "GATEHOUSE_XDP_DAEMON"

func TestMain(m *testing.M) {
	if spec := os.Getenv(daemonEnv); spec != "" {
		standIn(spec)
	}
	os.Exit(m.Run())
}

func standIn(spec string) {
	iface, pinDir, _ := strings.Cut(spec, ",")
	e, err := New(Config{Interface: iface, Mode: policy.XDPAuto, PinDir: pinDir})
	if err == nil {
		err = e.Apply(testPolicy(policy.ModeListeners))
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready", e.AttachMode())
	time.Sleep(time.Minute) // killed long before
	os.Exit(1)
}

// TestKill9KeepsFilter kills a real process holding the enforcer with
// SIGKILL: the filter keeps dropping, and a new enforcer adopts it.
func TestKill9KeepsFilter(t *testing.T) {
	tp := newTopo(t)
	cmd := tp.gate.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+tp.iface+","+tp.pinDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface) })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "ready") || strings.HasPrefix(l, "error") {
				ready <- l
				return
			}
		}
		ready <- "exited"
	}()
	select {
	case l := <-ready:
		if !strings.HasPrefix(l, "ready") {
			t.Fatalf("stand-in daemon: %s", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("stand-in daemon did not get ready")
	}
	tp.expect(t, "daemon running", listenersProbes)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: an error is expected
	tp.expect(t, "daemon killed", listenersProbes)

	e := tp.newEnforcer(t)
	t.Cleanup(func() { e.Close() })
	tp.expect(t, "restarted, adopted", listenersProbes)
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "restarted, applied", listenersProbes)
}
