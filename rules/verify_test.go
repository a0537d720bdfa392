package rules

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
)

var (
	testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	docs    = mustPrefixes("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
	// docGuards let the documentation ranges through, as tests and the demo do.
	docGuards = Guards{ReservedExempt: docs}
)

type testKey struct {
	pub  minisign.PublicKey
	priv minisign.PrivateKey
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{pub, priv}
}

// release is a bundle under construction: edit the fields, then build.
type release struct {
	m     Manifest
	files map[string][]byte
	keys  []testKey // each signs, in order
	// edit, when set, changes the manifest bytes before they are signed.
	edit func([]byte) []byte
}

func newRelease(serial uint64, keys ...testKey) *release {
	data := []byte("# test feed\n192.0.2.0/25\n192.0.2.128/25\n198.51.100.0/24\n2001:db8:1::/48\n")
	return &release{
		m: Manifest{
			Source: "test", Serial: serial,
			Issued: testNow.Add(-time.Hour), Expires: testNow.Add(24 * time.Hour),
			Files: []ManifestFile{NewManifestFile("ranges.txt", "cidr", data)},
		},
		files: map[string][]byte{"ranges.txt": data},
		keys:  keys,
	}
}

// setFile replaces the feed file and its manifest entry.
func (r *release) setFile(data []byte) *release {
	r.files = map[string][]byte{"ranges.txt": data}
	r.m.Files = []ManifestFile{NewManifestFile("ranges.txt", "cidr", data)}
	return r
}

func (r *release) build(t testing.TB) Bundle {
	t.Helper()
	raw, err := r.m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if r.edit != nil {
		raw = r.edit(raw)
	}
	b := Bundle{Manifest: raw, Files: r.files}
	for _, k := range r.keys {
		b.Signatures = append(b.Signatures, SignManifest(raw, k.priv, "test release"))
	}
	return b
}

func testFeedConfig(threshold int, keys ...testKey) FeedConfig {
	fc := FeedConfig{Name: "test", Source: "file:///nowhere/manifest.json", Format: "cidr", Threshold: threshold}
	for _, k := range keys {
		fc.Keys = append(fc.Keys, k.pub.String())
	}
	return fc
}

func newTestVerifier(t testing.TB, fc FeedConfig, g Guards) *Verifier {
	t.Helper()
	v, err := NewVerifier(fc, g, func() time.Time { return testNow })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifyGood(t *testing.T) {
	k := newTestKey(t)
	v := newTestVerifier(t, testFeedConfig(1, k), docGuards)
	b := newRelease(100, k).build(t)
	ver, err := v.Verify(b, nil, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := mustPrefixes("192.0.2.0/24", "198.51.100.0/24", "2001:db8:1::/48")
	if len(ver.Prefixes) != len(want) {
		t.Fatalf("prefixes = %v, want %v", ver.Prefixes, want)
	}
	for i := range want {
		if ver.Prefixes[i] != want[i] {
			t.Errorf("prefixes = %v, want %v", ver.Prefixes, want)
		}
	}
	if ver.Entries != 4 || ver.Selected != 4 || ver.Manifest.Serial != 100 || ver.Coverage.V4 != 512 {
		t.Errorf("entries %d selected %d serial %d cov4 %d", ver.Entries, ver.Selected, ver.Manifest.Serial, ver.Coverage.V4)
	}
	// The same release again is a no-op, not a refusal.
	if _, err := v.Verify(b, &Prior{Serial: 100, Digest: b.Digest()}, VerifyOptions{}); !errors.Is(err, ErrUnchanged) {
		t.Errorf("same release: err = %v, want ErrUnchanged", err)
	}
}

// TestVerifyRefusals covers every refusal, and the order of the checks:
// where a release has two faults, the earlier check names it.
func TestVerifyRefusals(t *testing.T) {
	k1, k2, k3, stranger := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	fc1 := testFeedConfig(1, k1)
	fc2 := testFeedConfig(2, k1, k2, k3)
	prior := &Prior{Serial: 100, Digest: sha256.Sum256([]byte("some other manifest"))}
	tests := []struct {
		name   string
		fc     FeedConfig
		g      Guards
		prior  *Prior
		bundle func(t testing.TB) Bundle
		want   Reason
	}{
		{"unsigned", fc1, docGuards, nil, func(t testing.TB) Bundle { return newRelease(101).build(t) }, ReasonBadSignature},
		{"unknown key", fc1, docGuards, nil, func(t testing.TB) Bundle { return newRelease(101, stranger).build(t) }, ReasonBadSignature},
		{"manifest changed after signing", fc1, docGuards, nil, func(t testing.TB) Bundle {
			b := newRelease(101, k1).build(t)
			b.Manifest = bytes.Replace(b.Manifest, []byte(`"serial": 101`), []byte(`"serial": 999`), 1)
			return b
		}, ReasonBadSignature},
		{"signature truncated", fc1, docGuards, nil, func(t testing.TB) Bundle {
			b := newRelease(101, k1).build(t)
			b.Signatures[0] = b.Signatures[0][:len(b.Signatures[0])/2]
			return b
		}, ReasonBadSignature},
		{"legacy non-prehashed signature", fc1, docGuards, nil, func(t testing.TB) Bundle {
			b := newRelease(101).build(t)
			b.Signatures = [][]byte{minisign.Sign(k1.priv, b.Manifest)}
			return b
		}, ReasonBadSignature},
		{"below threshold", fc2, docGuards, nil, func(t testing.TB) Bundle { return newRelease(101, k1, stranger).build(t) }, ReasonBadSignature},
		{"same key twice below threshold", fc2, docGuards, nil, func(t testing.TB) Bundle { return newRelease(101, k1, k1).build(t) }, ReasonBadSignature},
		{"signature checked before parse", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, stranger)
			r.edit = func([]byte) []byte { return []byte("not json") }
			return r.build(t)
		}, ReasonBadSignature},
		{"manifest too large", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.edit = func(b []byte) []byte { return append(b, bytes.Repeat([]byte(" "), MaxManifestSize)...) }
			return r.build(t)
		}, ReasonTooLarge},
		{"signed garbage", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.edit = func([]byte) []byte { return []byte("<html>oops</html>") }
			return r.build(t)
		}, ReasonBadManifest},
		{"unknown manifest field", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.edit = func(b []byte) []byte { return bytes.Replace(b, []byte("{"), []byte(`{"extra": 1,`), 1) }
			return r.build(t)
		}, ReasonBadManifest},
		{"manifest trailing data", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.edit = func(b []byte) []byte { return append(b, "{}"...) }
			return r.build(t)
		}, ReasonBadManifest},
		{"path in file name", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.m.Files[0].Name = "../etc/passwd"
			return r.build(t)
		}, ReasonBadManifest},
		{"format differs from config", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.m.Files[0].Format = "aws"
			return r.build(t)
		}, ReasonBadManifest},
		{"wrong source", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.m.Source = "other"
			return r.build(t)
		}, ReasonWrongSource},
		{"expired", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.m.Issued, r.m.Expires = testNow.Add(-48*time.Hour), testNow.Add(-time.Second)
			return r.build(t)
		}, ReasonExpired},
		{"issued in the future", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1)
			r.m.Issued, r.m.Expires = testNow.Add(MaxClockSkew+time.Minute), testNow.Add(48*time.Hour)
			return r.build(t)
		}, ReasonNotYetValid},
		{"expired before rollback", fc1, docGuards, prior, func(t testing.TB) Bundle {
			r := newRelease(99, k1)
			r.m.Issued, r.m.Expires = testNow.Add(-48*time.Hour), testNow.Add(-time.Second)
			return r.build(t)
		}, ReasonExpired},
		{"rollback", fc1, docGuards, prior, func(t testing.TB) Bundle { return newRelease(99, k1).build(t) }, ReasonRollback},
		{"serial reused with other content", fc1, docGuards, prior, func(t testing.TB) Bundle { return newRelease(100, k1).build(t) }, ReasonSerialReuse},
		{"rollback before hash", fc1, docGuards, prior, func(t testing.TB) Bundle {
			b := newRelease(99, k1).build(t)
			b.Files["ranges.txt"] = []byte("garbage")
			return b
		}, ReasonRollback},
		{"file length", fc1, docGuards, prior, func(t testing.TB) Bundle {
			b := newRelease(101, k1).build(t)
			b.Files["ranges.txt"] = append(bytes.Clone(b.Files["ranges.txt"]), '\n')
			return b
		}, ReasonHashMismatch},
		{"file content", fc1, docGuards, prior, func(t testing.TB) Bundle {
			b := newRelease(101, k1).build(t)
			b.Files["ranges.txt"] = bytes.Replace(b.Files["ranges.txt"], []byte("198.51.100.0/24"), []byte("198.51.100.0/23"), 1)
			return b
		}, ReasonHashMismatch},
		{"file missing", fc1, docGuards, prior, func(t testing.TB) Bundle {
			b := newRelease(101, k1).build(t)
			b.Files = nil
			return b
		}, ReasonFetch},
		{"hash before parse", fc1, docGuards, nil, func(t testing.TB) Bundle {
			b := newRelease(101, k1).setFile([]byte("<html>")).build(t)
			b.Files["ranges.txt"] = []byte("<htm>")
			return b
		}, ReasonHashMismatch},
		{"html served and signed", fc1, docGuards, nil, func(t testing.TB) Bundle {
			return newRelease(101, k1).setFile([]byte("<!DOCTYPE html><html><body>Service Unavailable</body></html>")).build(t)
		}, ReasonParse},
		{"empty file", fc1, docGuards, nil, func(t testing.TB) Bundle {
			r := newRelease(101, k1).setFile([]byte("\n"))
			return r.build(t)
		}, ReasonParse},
		{"host bits", fc1, docGuards, nil, func(t testing.TB) Bundle {
			return newRelease(101, k1).setFile([]byte("192.0.2.1/24\n")).build(t)
		}, ReasonNotCanonical},
		{"too broad v4", fc1, Guards{MinPrefixV4: 16, ReservedExempt: docs}, nil, func(t testing.TB) Bundle {
			return newRelease(101, k1).setFile([]byte("192.0.2.0/24\n8.0.0.0/15\n")).build(t)
		}, ReasonTooBroad},
		{"too broad default v6", fc1, docGuards, nil, func(t testing.TB) Bundle {
			return newRelease(101, k1).setFile([]byte("2600::/16\n")).build(t)
		}, ReasonTooBroad},
		{"reserved 252/10 inside a good feed", fc1, docGuards, nil, func(t testing.TB) Bundle {
			return newRelease(101, k1).setFile([]byte("192.0.2.0/24\n252.0.0.0/10\n198.51.100.0/24\n")).build(t)
		}, ReasonBogon},
		{"documentation without exemption", fc1, Guards{}, nil, func(t testing.TB) Bundle { return newRelease(101, k1).build(t) }, ReasonBogon},
		{"guards before selection", FeedConfig{Name: "test", Format: "oracle", Keys: fc1.Keys, Threshold: 1, Select: map[string][]string{"region": {"a"}}}, docGuards, nil, func(t testing.TB) Bundle {
			data := []byte(`{"regions":[{"region":"a","cidrs":[{"cidr":"192.0.2.0/24","tags":["OCI"]}]},{"region":"b","cidrs":[{"cidr":"10.0.0.0/8","tags":["OCI"]}]}]}`)
			r := newRelease(101, k1)
			r.files = map[string][]byte{"o.json": data}
			r.m.Files = []ManifestFile{NewManifestFile("o.json", "oracle", data)}
			return r.build(t)
		}, ReasonBogon},
		{"selection keeps nothing", FeedConfig{Name: "test", Format: "oracle", Keys: fc1.Keys, Threshold: 1, Select: map[string][]string{"region": {"c"}}}, docGuards, nil, func(t testing.TB) Bundle {
			data := []byte(`{"regions":[{"region":"a","cidrs":[{"cidr":"192.0.2.0/24","tags":["OCI"]}]}]}`)
			r := newRelease(101, k1)
			r.files = map[string][]byte{"o.json": data}
			r.m.Files = []ManifestFile{NewManifestFile("o.json", "oracle", data)}
			return r.build(t)
		}, ReasonEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, tt.fc, tt.g)
			ver, err := v.Verify(tt.bundle(t), tt.prior, VerifyOptions{})
			if err == nil {
				t.Fatalf("verified %v, want refusal %q", ver.Prefixes, tt.want)
			}
			if got := ReasonOf(err); got != tt.want {
				t.Errorf("reason = %q, want %q (%v)", got, tt.want, err)
			}
		})
	}
}

func TestVerifyThreshold(t *testing.T) {
	k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t)
	v := newTestVerifier(t, testFeedConfig(2, k1, k2, k3), docGuards)
	for _, signers := range [][]testKey{{k1, k2}, {k3, k1}, {k1, k2, k3}, {newTestKey(t), k2, k3}} {
		if _, err := v.Verify(newRelease(101, signers...).build(t), nil, VerifyOptions{}); err != nil {
			t.Errorf("%d signers: %v", len(signers), err)
		}
	}
}

func TestVerifyExpiredInForce(t *testing.T) {
	k := newTestKey(t)
	v := newTestVerifier(t, testFeedConfig(1, k), docGuards)
	r := newRelease(101, k)
	r.m.Issued, r.m.Expires = testNow.Add(-48*time.Hour), testNow.Add(-time.Hour)
	ver, err := v.Verify(r.build(t), nil, VerifyOptions{IgnoreExpiry: true})
	if err != nil {
		t.Fatal(err)
	}
	if !ver.Expired {
		t.Error("Expired not set")
	}
}

func TestNewVerifierRefusesBadConfig(t *testing.T) {
	k := newTestKey(t)
	good := testFeedConfig(1, k)
	tests := map[string]func(*FeedConfig){
		"bad name":        func(fc *FeedConfig) { fc.Name = "Bad Name" },
		"unknown format":  func(fc *FeedConfig) { fc.Format = "bgp" },
		"unknown select":  func(fc *FeedConfig) { fc.Format, fc.Select = "aws", map[string][]string{"scope": {"x"}} },
		"no keys":         func(fc *FeedConfig) { fc.Keys = nil },
		"bad key":         func(fc *FeedConfig) { fc.Keys = []string{"RWQnope"} },
		"threshold high":  func(fc *FeedConfig) { fc.Threshold = 2 },
		"threshold zero":  func(fc *FeedConfig) { fc.Threshold = 0 },
		"negative shrink": func(fc *FeedConfig) { fc.MaxShrink = -1 },
		"same key twice":  func(fc *FeedConfig) { fc.Keys, fc.Threshold = append(fc.Keys, fc.Keys[0]), 2 },
	}
	for name, mut := range tests {
		fc := good
		mut(&fc)
		if _, err := NewVerifier(fc, Guards{}, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewVerifier(good, Guards{MinPrefixV4: 33}, nil); err == nil {
		t.Error("min prefix 33 accepted")
	}
}

func TestGuards(t *testing.T) {
	tests := []struct {
		g    Guards
		p    string
		want Reason
	}{
		{Guards{}, "8.8.8.0/24", ""},
		{Guards{}, "8.0.0.0/8", ""},
		{Guards{}, "8.0.0.0/7", ReasonTooBroad},
		{Guards{MinPrefixV4: 12}, "8.0.0.0/11", ReasonTooBroad},
		{Guards{}, "2600::/24", ""},
		{Guards{}, "2600::/23", ReasonTooBroad},
		{Guards{}, "8.8.8.8/24", ReasonNotCanonical},
		{Guards{}, "2600::1/64", ReasonNotCanonical},
		{Guards{}, "10.1.0.0/16", ReasonBogon},
		{Guards{}, "100.64.0.0/12", ReasonBogon},
		{Guards{}, "127.0.0.1/32", ReasonBogon},
		{Guards{}, "169.254.0.0/16", ReasonBogon},
		{Guards{}, "172.20.0.0/16", ReasonBogon},
		{Guards{}, "192.168.1.0/24", ReasonBogon},
		{Guards{}, "224.0.0.0/8", ReasonBogon},
		{Guards{}, "252.0.0.0/10", ReasonBogon},
		{Guards{}, "255.255.255.255/32", ReasonBogon},
		{Guards{}, "192.0.0.0/8", ReasonBogon}, // contains special ranges
		{Guards{}, "203.0.113.0/24", ReasonBogon},
		{Guards{ReservedExempt: docs}, "203.0.113.0/25", ""},
		{Guards{ReservedExempt: docs}, "203.0.112.0/23", ReasonBogon}, // only half exempt
		{Guards{}, "::1/128", ReasonBogon},
		{Guards{}, "::ffff:8.8.8.0/120", ReasonBogon},
		{Guards{}, "fc00::/32", ReasonBogon},
		{Guards{}, "fe80::/64", ReasonBogon},
		{Guards{}, "ff02::/32", ReasonBogon},
		{Guards{}, "2001:db8::/48", ReasonBogon},
		{Guards{}, "2002::/32", ReasonBogon},
		{Guards{}, "4000::/32", ReasonBogon}, // outside 2000::/3
		{Guards{ReservedExempt: docs}, "2001:db8:5::/48", ""},
	}
	for _, tt := range tests {
		got := ReasonOf(tt.g.CheckPrefix(netip.MustParsePrefix(tt.p)))
		if got != tt.want {
			t.Errorf("%s with %+v: %q, want %q", tt.p, tt.g, got, tt.want)
		}
	}
}

// TestGuardsValidateExempt: an exemption must stay inside reserved space.
func TestGuardsValidateExempt(t *testing.T) {
	for _, tc := range []struct {
		exempt string
		ok     bool
	}{
		{"192.0.2.0/24", true},
		{"192.0.2.128/25", true},
		{"10.0.0.0/8", true},
		{"2001:db8::/32", true},
		{"fc00::/7", true}, // outside 2000::/3
		{"0.0.0.0/0", false},
		{"::/0", false},
		{"8.0.0.0/8", false},
		{"192.0.0.0/16", false}, // holds special ranges and public space
		{"2600::/16", false},
	} {
		err := Guards{ReservedExempt: mustPrefixes(tc.exempt)}.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("reserved_exempt %s: %v, want ok=%v", tc.exempt, err, tc.ok)
		}
	}
}

func TestCheckCoverage(t *testing.T) {
	cov := func(ss ...string) Coverage { return CoverageOf(Aggregate(mustPrefixes(ss...))) }
	old := cov("8.8.0.0/16", "2600::/32")
	tests := []struct {
		name string
		new  Coverage
		want Reason
	}{
		{"same", cov("8.8.0.0/16", "2600::/32"), ""},
		{"split differently, same space", cov("8.8.0.0/17", "8.8.128.0/17", "2600::/33", "2600:0:8000::/33"), ""},
		{"shrink 25 % is allowed", cov("8.8.0.0/17", "8.8.128.0/18", "2600::/32"), ""},
		{"shrink 50 %", cov("8.8.0.0/17", "2600::/32"), ReasonQuarantined},
		{"grow 100 %", cov("8.8.0.0/15", "2600::/32"), ReasonQuarantined},
		{"many more small prefixes, little space", cov("8.8.0.0/16", "9.9.9.0/24", "9.9.10.0/24", "9.9.11.0/24", "2600::/32"), ""},
		{"v6 vanishes", cov("8.8.0.0/16"), ReasonQuarantined},
		{"v6 halves", cov("8.8.0.0/16", "2600::/33"), ReasonQuarantined},
	}
	for _, tt := range tests {
		if got := ReasonOf(CheckCoverage(old, tt.new, DefaultMaxShrink, DefaultMaxGrow)); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	if err := CheckCoverage(cov("8.8.0.0/16"), cov("8.8.0.0/16", "2600::/32"), 0.25, 0.25); ReasonOf(err) != ReasonQuarantined {
		t.Errorf("v6 appearing: %v", err)
	}
	if err := CheckCoverage(old, cov("8.8.0.0/16"), 1, 0.25); ReasonOf(err) != ReasonQuarantined {
		t.Errorf("v6 vanishing with max_shrink 1: %v, want quarantined", err)
	}
	if err := CheckCoverage(old, cov("8.8.0.0/17", "2600::/32"), 0.6, 0.25); err != nil {
		t.Errorf("shrink within a 60 %% limit: %v", err)
	}
	if !strings.Contains(CheckCoverage(old, cov("8.8.0.0/17", "2600::/32"), 0.25, 0.25).Error(), "50.0 %") {
		t.Error("message lacks the measured change")
	}
}
