package main

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestTeardownRefusesSilentSocket: an admin socket that accepts but does
// not answer (a daemon too busy to) is not "no daemon": teardown refuses
// and removes nothing; --force tears down. Run in a namespace of its own,
// so that a teardown that should not happen touches nothing of the host.
func TestTeardownRefusesSilentSocket(t *testing.T) {
	netns.RequirePriv(t)
	ns := netns.New(t, "teardown")
	ns.Exec(t, "nft", "add", "table", "inet", "gatehouse")
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts into the backlog, never answers
	pinDir := filepath.Join(t.TempDir(), "pins")
	var stderr string
	err = ns.Do(func() error {
		var err error
		_, stderr, err = runCLI("teardown", "--yes", "--socket", sock, "--pin-dir", pinDir, "-c", "testdata/check/good.yaml")
		return err
	})
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "does not answer") || !strings.Contains(ee.msg, "Nothing removed") {
		t.Fatalf("teardown with a silent admin socket: %v %s, want a refusal", err, stderr)
	}
	if out := ns.Exec(t, "nft", "list", "tables"); !strings.Contains(out, "gatehouse") {
		t.Fatalf("a refused teardown deleted the table:\n%s", out)
	}

	err = ns.Do(func() error {
		_, stderr, err = runCLI("teardown", "--yes", "--force", "--socket", sock, "--pin-dir", pinDir, "-c", "testdata/check/good.yaml")
		return err
	})
	if err != nil || !strings.Contains(stderr, "does not answer") {
		t.Fatalf("teardown --force with a silent admin socket: %v %s", err, stderr)
	}
	if out := ns.Exec(t, "nft", "list", "tables"); strings.Contains(out, "gatehouse") {
		t.Errorf("teardown --force left the table:\n%s", out)
	}
}
