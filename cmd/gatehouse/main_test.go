package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func runCLI(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	err = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestCheckGood(t *testing.T) {
	out, _, err := runCLI("check", "-c", "testdata/check/good.yaml")
	if err != nil {
		t.Fatalf("check of a good file failed: %v", err)
	}
	golden(t, "check-good.golden", []byte(out))
}

func TestCheckBad(t *testing.T) {
	_, _, err := runCLI("check", "-c", "testdata/check/bad.yaml")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("check of a bad file: want exit 1, got %v", err)
	}
	golden(t, "check-bad.golden", []byte(ee.msg+"\n"))
}

func TestCheckMissingFile(t *testing.T) {
	_, _, err := runCLI("check", "-c", "testdata/check/nope.yaml")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "no such file") {
		t.Fatalf("want exit 1 naming the missing file, got %v", err)
	}
}

func TestPrintDefault(t *testing.T) {
	out, _, err := runCLI("check", "--print-default")
	if err != nil || out != string(config.Default) {
		t.Fatalf("--print-default: %v", err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"check", "--no-such-flag"},
		{"run", "--log-format", "xml", "-c", "testdata/check/good.yaml"},
		{"run", "--log-level", "loud", "-c", "testdata/check/good.yaml"},
		{"version", "extra"},
		{"frobnicate"},
	} {
		if _, _, err := runCLI(args...); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, err := runCLI("version")
	if err != nil || !strings.HasPrefix(out, "gatehouse ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestTeardownNeedsConfirmation(t *testing.T) {
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	root.SetIn(strings.NewReader("n\n"))
	root.SetArgs([]string{"teardown", "--pin-dir", t.TempDir(), "--interface", "eth9", "-c", "testdata/check/good.yaml"})
	err := root.Execute()
	var ee exitError
	if !errors.As(err, &ee) || !strings.Contains(ee.msg, "nothing removed") {
		t.Fatalf("teardown without a yes: %v", err)
	}
}

func TestConfirm(t *testing.T) {
	for in, want := range map[string]bool{"y\n": true, "YES\n": true, "n\n": false, "\n": false, "": false, "yes please\n": false} {
		got, err := confirm(strings.NewReader(in), io.Discard, "? ")
		if err != nil || got != want {
			t.Errorf("confirm(%q) = %v, %v", in, got, err)
		}
	}
}

func TestUntilText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		365 * 24 * time.Hour: "in 365 days",
		30 * time.Hour:       "in 30h0m0s",
		-2 * time.Hour:       "EXPIRED 2h0m0s ago",
	} {
		if got := untilText(d); got != want {
			t.Errorf("untilText(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestCheckLoadsCertificates: a file that exists but is not the key of the
// server certificate fails check, as it would fail the daemon's start.
func TestCheckLoadsCertificates(t *testing.T) {
	good, err := os.ReadFile("testdata/check/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(good, []byte("server_key: testdata/check/server.key"), []byte("server_key: testdata/check/acme-ca.pem"), 1)
	path := filepath.Join(t.TempDir(), "badkey.yaml")
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCLI("check", "-c", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "acme-ca.pem") || !strings.Contains(ee.msg, "NOT valid") {
		t.Fatalf("check with a CA as the server key: want exit 1 naming the file, got %v", err)
	}
}

// TestCheckFeedGuards: check builds the feed verifiers as run does, so a
// reserved_exempt that would switch the bogon check off for public space
// fails check, named.
func TestCheckFeedGuards(t *testing.T) {
	good, err := os.ReadFile("testdata/check/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "exempt.yaml")
	if err := os.WriteFile(path, append(good, []byte("rules:\n  reserved_exempt: [192.0.2.0/24, 0.0.0.0/0]\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCLI("check", "-c", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "reserved exempt 0.0.0.0/0") {
		t.Fatalf("check with reserved_exempt 0.0.0.0/0: want exit 1 naming it, got %v", err)
	}
}
