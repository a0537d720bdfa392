package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/rules"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// feedRun runs `gatehouse feed ARGS…` on its own command tree.
func feedRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := feedTry(args...)
	if err != nil {
		t.Fatalf("feed %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func feedTry(args ...string) (string, error) {
	c := newFeedCmd()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetIn(strings.NewReader("correct horse\n"))
	c.SetArgs(args)
	err := c.Execute()
	return out.String(), err
}

var pubKeyRE = regexp.MustCompile(`public key \(for minisign_keys\): (RW\S+)`)

func feedKeygen(t *testing.T, prefix string) string {
	t.Helper()
	out := feedRun(t, "keygen", "--out", prefix, "--unencrypted")
	m := pubKeyRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no public key in output:\n%s", out)
	}
	if st, err := os.Stat(prefix + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", err, st.Mode())
	}
	return m[1]
}

func realFeed(t *testing.T, name string) []byte {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "testdata", "feeds", name))
	if err != nil {
		t.Fatalf("real feed files missing (want shared/ beside the clone): %v", err)
	}
	return data
}

func TestFeedSignVerify(t *testing.T) {
	dir, keys := t.TempDir(), t.TempDir()
	pub1 := feedKeygen(t, filepath.Join(keys, "one"))
	pub2 := feedKeygen(t, filepath.Join(keys, "two"))
	if _, err := feedTry("keygen", "--out", filepath.Join(keys, "one"), "--unencrypted"); err == nil {
		t.Error("keygen overwrote an existing key")
	}
	if err := os.WriteFile(filepath.Join(dir, "ip-ranges.json"), realFeed(t, "aws-ip-ranges.2024-07-04.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	feedRun(t, "sign", "--dir", dir, "--key", filepath.Join(keys, "one.key"), "--source", "aws", "--format", "aws",
		"--serial", "1720134187", "ip-ranges.json")
	if _, err := feedTry("sign", "--dir", dir, "--key", filepath.Join(keys, "one.key"), "--source", "aws", "--format", "aws",
		"--serial", "1720134187", "ip-ranges.json"); err == nil {
		t.Error("signed a manifest with a serial not above the one in the directory")
	}

	verify := func(extra ...string) (string, error) {
		args := append([]string{"verify", "--name", "aws", "--format", "aws", "--key", pub1, "--key", pub2,
			"--select", "service=EC2", "--select", "region=eu-west-1"}, extra...)
		return feedTry(append(args, dir)...)
	}
	out, err := verify()
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	for _, want := range []string{"serial 1720134187", "entries 11846, selected 87, aggregated 74", "ipv4 50 prefixes covering 5423648 addresses"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	// Threshold 2 needs the co-signature.
	if out, err := verify("--threshold", "2"); err == nil || !strings.Contains(err.Error(), "bad_signature") {
		t.Errorf("threshold 2 with one signature: %v\n%s", err, out)
	}
	feedRun(t, "sign", "--dir", dir, "--key", filepath.Join(keys, "two.key"), "--index", "2")
	if out, err := verify("--threshold", "2"); err != nil {
		t.Errorf("threshold 2 after co-signing: %v\n%s", err, out)
	}

	// The minisign tool verifies both signatures.
	tool := netns.RequireTool(t, "minisign", "minisign")
	for i, pub := range []string{pub1, pub2} {
		cmd := exec.Command(tool, "-V", "-P", pub, "-m", filepath.Join(dir, rules.ManifestName),
			"-x", filepath.Join(dir, rules.SignatureName(i+1)))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("minisign -V signature %d: %v\n%s", i+1, err, out)
		}
	}

	// A changed feed file is refused with its reason.
	f := filepath.Join(dir, "ip-ranges.json")
	data, _ := os.ReadFile(f)
	os.WriteFile(f, bytes.Replace(data, []byte("3.5.140.0/22"), []byte("3.5.140.0/23"), 1), 0o644)
	if out, err := verify(); err == nil || !strings.Contains(err.Error(), "hash_mismatch") {
		t.Errorf("tampered file: %v\n%s", err, out)
	}
	// A selection key the format lacks is an error.
	if _, err := feedTry("verify", "--name", "aws", "--format", "aws", "--key", pub1, "--select", "scope=x", dir); err == nil {
		t.Error("unknown selection key accepted")
	}
}

func TestFeedKeygenEncrypted(t *testing.T) {
	if testing.Short() {
		t.Skip("scrypt with minisign's parameters needs 1 GiB")
	}
	dir, keys := t.TempDir(), t.TempDir()
	pub := pubKeyRE.FindStringSubmatch(feedRun(t, "keygen", "--out", filepath.Join(keys, "k"), "--password-file", "-"))[1]
	os.WriteFile(filepath.Join(dir, "v4.txt"), []byte("192.0.2.0/24\n"), 0o644)
	if _, err := feedTry("sign", "--dir", dir, "--key", filepath.Join(keys, "k.key"), "--source", "docs", "--format", "cidr", "v4.txt"); err == nil {
		t.Fatal("signed with an encrypted key and no password")
	}
	feedRun(t, "sign", "--dir", dir, "--key", filepath.Join(keys, "k.key"), "--password-file", "-",
		"--source", "docs", "--format", "cidr", "v4.txt")
	feedRun(t, "verify", "--name", "docs", "--format", "cidr", "--key", pub, "--reserved-exempt", "192.0.2.0/24", dir)
}

func TestFeedInspect(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "oracle.json")
	os.WriteFile(f, realFeed(t, "oracle-public_ip_ranges.2025-07-21.json"), 0o644)
	out := feedRun(t, "inspect", "--format", "oracle", "--select", "tags=OSN", f)
	words := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"format oracle, 896 entries",
		"select key region 45 values",
		"select key tags 3 values",
		"all ipv4 896 896 629 3697802",
		"selected tags=OSN ipv4 396 396 320 340618",
		"selected tags=OSN ipv4 lengths /19:6 /20:10 /21:31 /22:120 /23:92 /24:13 /25:95 /26:24 /31:5",
		"guards (defaults): pass",
	} {
		if !strings.Contains(words, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if _, err := feedTry("inspect", "--format", "oracle", "--select", "service=x", f); err == nil {
		t.Error("unknown selection key accepted")
	}
	os.WriteFile(f, []byte("<html>502</html>"), 0o644)
	if _, err := feedTry("inspect", "--format", "oracle", f); err == nil || !strings.Contains(err.Error(), "parse_error") {
		t.Errorf("html page: %v", err)
	}
}

func TestFeedAccept(t *testing.T) {
	state := t.TempDir()
	if _, err := feedTry("accept", "--state-dir", state, "aws"); err == nil {
		t.Fatal("accepted with nothing in quarantine")
	}
	st, err := rules.OpenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	m := rules.Manifest{Source: "aws", Serial: 42, Issued: now, Expires: now.Add(time.Hour),
		Files: []rules.ManifestFile{rules.NewManifestFile("v4.txt", "cidr", []byte("192.0.2.0/24\n"))}}
	raw, _ := m.Marshal()
	b := rules.Bundle{Manifest: raw, Files: map[string][]byte{"v4.txt": []byte("192.0.2.0/24\n")}}
	if err := st.SaveQuarantine("aws", 42, b); err != nil {
		t.Fatal(err)
	}
	out := feedRun(t, "accept", "--state-dir", state, "aws")
	if !strings.Contains(out, "serial 42") {
		t.Errorf("output: %s", out)
	}
	d, ok, err := st.ReadAccept("aws")
	if err != nil || !ok || d != b.Digest() {
		t.Errorf("acceptance not recorded: %v %v", ok, err)
	}

	// A release that expired in quarantine is not accepted.
	m.Serial, m.Issued, m.Expires = 43, now.Add(-2*time.Hour), now.Add(-time.Hour)
	raw, _ = m.Marshal()
	old := rules.Bundle{Manifest: raw, Files: b.Files}
	if err := st.SaveQuarantine("aws", 43, old); err != nil {
		t.Fatal(err)
	}
	if _, err := feedTry("accept", "--state-dir", state, "aws"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("accept of an expired release: %v, want a refusal naming the expiry", err)
	}
	if d, _, _ := st.ReadAccept("aws"); d == old.Digest() {
		t.Error("consent recorded for an expired release")
	}
}

// keygen never writes through a symbolic link planted at a key's name,
// never overwrites without --force, and leaves a 0600 secret key even when
// --force replaces a file that was readable by others.
func TestFeedKeygenRefusesExistingAndLinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A dangling link: a Stat check finds nothing there.
	planted := filepath.Join(dir, "planted")
	if err := os.Symlink(planted, filepath.Join(dir, "a.key")); err != nil {
		t.Fatal(err)
	}
	out, err := feedTry("keygen", "--out", filepath.Join(dir, "a"), "--unencrypted")
	if want := "create " + filepath.Join(dir, "a.key") + ": file exists (use --force to replace it)"; err == nil || err.Error() != want {
		t.Errorf("keygen over a dangling link: %v, want %q\n%s", err, want, out)
	}
	if _, err := os.Lstat(planted); err == nil {
		t.Error("keygen wrote the secret key through a dangling symbolic link")
	}
	if _, err := os.Lstat(filepath.Join(dir, "a.pub")); err == nil {
		t.Error("keygen wrote a public key after refusing the secret key")
	}

	// An existing public key: nothing is written, not even the secret key.
	if err := os.WriteFile(filepath.Join(dir, "b.pub"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := feedTry("keygen", "--out", filepath.Join(dir, "b"), "--unencrypted"); err == nil {
		t.Error("keygen over an existing public key succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "b.key")); err == nil {
		t.Error("keygen left a secret key without its public key")
	}

	// --force replaces a link itself, not the file it points to.
	if err := os.Symlink(victim, filepath.Join(dir, "c.key")); err != nil {
		t.Fatal(err)
	}
	feedRun(t, "keygen", "--out", filepath.Join(dir, "c"), "--unencrypted", "--force")
	if got, _ := os.ReadFile(victim); string(got) != "keep" {
		t.Errorf("keygen --force wrote through a symbolic link: victim holds %q", got)
	}
	if st, err := os.Lstat(filepath.Join(dir, "c.key")); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("secret key after --force over a link: %v %v, want a regular file, mode 0600", err, modeOf(st))
	}

	// --force over a key made readable by others narrows it to 0600.
	if err := os.WriteFile(filepath.Join(dir, "d.key"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	feedRun(t, "keygen", "--out", filepath.Join(dir, "d"), "--unencrypted", "--force")
	if st, err := os.Stat(filepath.Join(dir, "d.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secret key after --force over a 0644 file: %v %v, want mode 0600", err, modeOf(st))
	}
}

func modeOf(st os.FileInfo) os.FileMode {
	if st == nil {
		return 0
	}
	return st.Mode()
}
