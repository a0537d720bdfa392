package test

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// TestPrivateBPFFSRefused: `ip netns exec` gives the daemon a mount
// namespace of its own, where /sys is the namespace's sysfs without a
// bpffs; with the default pin directory the daemon would mount a bpffs
// there that exists only as long as the process, and its XDP filter would
// go with it. check and run refuse that, naming enforcement.pin_dir and
// attaching nothing; with --allow-private-bpffs run starts, says at error
// and in status that the filter will not outlive it, and indeed the filter
// is gone once the daemon is killed. (Every other test pins on a bpffs the
// test mounted in the host's namespace, which run accepts.)
func TestPrivateBPFFSRefused(t *testing.T) {
	tp := newTopology(t) // pins on the test's own bpffs: accepted
	tp.stopAndTeardown(t)
	b, err := os.ReadFile(tp.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := regexp.MustCompile(`(?m)^  pin_dir: .*\n`).ReplaceAllString(string(b), "") // the default, /sys/fs/bpf/gatehouse
	if err := os.WriteFile(tp.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	xdpAttached := func() bool { return strings.Contains(tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B), "xdp") }

	out, err := tp.dmz.Command(binary(t), "check", "-c", tp.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "enforcement.pin_dir") || !strings.Contains(string(out), "not the host's") {
		t.Errorf("check under ip netns exec with the default pin directory: %v, want a refusal naming enforcement.pin_dir:\n%s", err, out)
	}

	run := tp.dmz.Command(binary(t), "run", "-c", tp.config)
	var buf testkit.LogBuffer
	run.Stdout, run.Stderr = &buf, &buf
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(buf.String(), "would be detached when the daemon exits") || !strings.Contains(buf.String(), "--allow-private-bpffs") {
			t.Errorf("run with a private bpffs: %v, want a refusal saying why and how to override:\n%s", err, buf.String())
		}
	case <-time.After(15 * time.Second):
		run.Process.Kill()
		<-exited
		t.Fatalf("run with a private bpffs did not refuse to start:\n%s", buf.String())
	}
	if xdpAttached() {
		t.Error("a refused run left an XDP filter attached")
	}

	tp.d = launch(t, tp.dmz.Command(binary(t), "run", "--allow-private-bpffs", "-c", tp.config), "127.0.0.1:9477", tp.metricsClient)
	if !regexp.MustCompile(`level=ERROR msg="the XDP filter will not outlive the daemon`).MatchString(tp.d.out.String()) {
		t.Errorf("no error log saying the filter will not outlive the daemon:\n%s", tp.d.out.String())
	}
	status, _ := tp.dmz.Command(binary(t), "status", "-c", tp.config).CombinedOutput()
	if !strings.Contains(string(status), "WARNING: the XDP filter will not outlive the daemon") {
		t.Errorf("status lacks the warning:\n%s", status)
	}
	if !xdpAttached() {
		t.Fatal("no XDP filter with --allow-private-bpffs")
	}
	tp.d.kill()
	// What the rule is about: the bpffs went with the daemon's mount
	// namespace, and the filter with it (the kernel releases it shortly).
	deadline := time.Now().Add(10 * time.Second)
	for xdpAttached() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if xdpAttached() {
		t.Error("the filter of a private bpffs outlived the daemon; the rule's premise is wrong")
	}
}
