package rules

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"aead.dev/minisign"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// minisignTool returns the path of the minisign tool. CI installs it, so
// there a missing tool fails the test; elsewhere it skips.
func minisignTool(t *testing.T) string {
	t.Helper()
	return netns.RequireTool(t, "minisign", "minisign")
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestMinisignToolSignsGatehouseVerifies: a release signed by the minisign
// tool verifies in gatehouse; the tool's legacy mode (-l) is refused.
func TestMinisignToolSignsGatehouseVerifies(t *testing.T) {
	tool := minisignTool(t)
	dir := t.TempDir()
	pubPath, keyPath := filepath.Join(dir, "tool.pub"), filepath.Join(dir, "tool.key")
	runTool(t, tool, "-G", "-W", "-p", pubPath, "-s", keyPath)

	r := newRelease(7)
	raw, err := r.m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mPath := filepath.Join(dir, ManifestName)
	if err := os.WriteFile(mPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, tool, "-S", "-s", keyPath, "-m", mPath, "-t", "release 7")
	runTool(t, tool, "-S", "-l", "-s", keyPath, "-m", mPath, "-x", mPath+".legacy")

	pubText, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(string(pubText))
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := os.ReadFile(mPath + ".minisig")
	legacy, _ := os.ReadFile(mPath + ".legacy")
	if err := VerifySignatures(raw, [][]byte{sig}, []minisign.PublicKey{pub}, 1); err != nil {
		t.Errorf("tool's prehashed signature: %v", err)
	}
	if err := VerifySignatures(raw, [][]byte{legacy}, []minisign.PublicKey{pub}, 1); ReasonOf(err) != ReasonBadSignature {
		t.Errorf("tool's legacy signature: err = %v, want bad_signature", err)
	}
	// The whole release verifies through a feed configured with the key line.
	fc := FeedConfig{Name: "test", Format: "cidr", Keys: []string{pub.String()}, Threshold: 1}
	v := newTestVerifier(t, fc, docGuards)
	if _, err := v.Verify(Bundle{Manifest: raw, Signatures: [][]byte{sig}, Files: r.files}, nil, VerifyOptions{}); err != nil {
		t.Errorf("release: %v", err)
	}
}

// TestGatehouseSignsMinisignToolVerifies: gatehouse's key files and
// signatures work with the minisign tool.
func TestGatehouseSignsMinisignToolVerifies(t *testing.T) {
	tool := minisignTool(t)
	dir := t.TempDir()
	pubFile, secFile, pub, err := GenerateKey("")
	if err != nil {
		t.Fatal(err)
	}
	pubPath, keyPath := filepath.Join(dir, "gh.pub"), filepath.Join(dir, "gh.key")
	mustWrite(t, pubPath, pubFile)
	mustWrite(t, keyPath, secFile)
	priv, err := ParseSecretKey(secFile, "")
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().(minisign.PublicKey).Equal(pub) {
		t.Fatal("secret key does not match public key")
	}

	raw, _ := newRelease(8).m.Marshal()
	mPath := filepath.Join(dir, ManifestName)
	mustWrite(t, mPath, raw)
	mustWrite(t, mPath+".minisig", SignManifest(raw, priv, "release 8"))
	out := runTool(t, tool, "-V", "-p", pubPath, "-m", mPath)
	if !bytes.Contains([]byte(out), []byte("release 8")) {
		t.Errorf("tool output lacks the trusted comment:\n%s", out)
	}
	runTool(t, tool, "-V", "-P", pub.String(), "-m", mPath)

	// The tool signs with a gatehouse secret key file too.
	other := filepath.Join(dir, "other.json")
	mustWrite(t, other, []byte("{}\n"))
	runTool(t, tool, "-S", "-s", keyPath, "-m", other)
	sig, _ := os.ReadFile(other + ".minisig")
	if err := VerifySignatures([]byte("{}\n"), [][]byte{sig}, []minisign.PublicKey{pub}, 1); err != nil {
		t.Errorf("tool signature with gatehouse key: %v", err)
	}

	// A tampered manifest fails in the tool as well.
	mustWrite(t, mPath, append(raw, ' '))
	if err := exec.Command(tool, "-V", "-p", pubPath, "-m", mPath).Run(); err == nil {
		t.Error("tool verified a tampered manifest")
	}
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
