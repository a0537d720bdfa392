package rules

import (
	"bytes"
	"encoding/json"
	"testing"

	"aead.dev/minisign"
)

// fuzzParse checks what must hold for any input: no panic; success means
// at least one valid prefix, and every entry survives the guards or is
// refused with a reason.
func fuzzParse(f *testing.F, format string, seeds ...string) {
	for _, s := range seeds {
		data := readFeed(f, s)
		f.Add(data)
		// A few entries of the same file keep the fuzzer fast.
		if small := shrinkFeed(f, format, data); small != nil {
			f.Add(small)
		}
	}
	f.Add([]byte("<html><body>502</body></html>"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(format, data)
		if err != nil {
			if ReasonOf(err) != ReasonParse {
				t.Fatalf("error without parse_error reason: %v", err)
			}
			return
		}
		all := r.All()
		if len(all) == 0 || len(all) != r.Count() {
			t.Fatalf("parsed %d entries, Count %d", len(all), r.Count())
		}
		for _, p := range all {
			if !p.IsValid() {
				t.Fatalf("invalid prefix %v", p)
			}
			if err := (Guards{}).CheckPrefix(p); err != nil && ReasonOf(err) == "" {
				t.Fatalf("guard error without reason: %v", err)
			}
		}
		agg := Aggregate(all)
		if len(agg) == 0 || len(agg) > len(all) {
			t.Fatalf("aggregated %d to %d", len(all), len(agg))
		}
	})
}

func FuzzParseAWS(f *testing.F)    { fuzzParse(f, "aws", awsFixture) }
func FuzzParseGCP(f *testing.F)    { fuzzParse(f, "gcp", gcpFixture, googFixture) }
func FuzzParseAzure(f *testing.F)  { fuzzParse(f, "azure", azureFixture) }
func FuzzParseOracle(f *testing.F) { fuzzParse(f, "oracle", oracleFixture) }
func FuzzParseCIDR(f *testing.F)   { fuzzParse(f, "cidr", cfV4Fixture, cfV6Fixture) }

// fuzzKey is a fixed key so that the seeds' signatures stay valid.
func fuzzKey(f *testing.F) testKey {
	pub, priv, err := minisign.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))
	if err != nil {
		f.Fatal(err)
	}
	return testKey{pub, priv}
}

// FuzzManifest feeds the signature and manifest readers: they never
// panic, a manifest that parses round-trips, and whatever verifies under
// the key was signed by it (the one seed manifest).
func FuzzManifest(f *testing.F) {
	k := fuzzKey(f)
	good := newRelease(100, k).build(f)
	f.Add(good.Manifest, good.Signatures[0])
	r := newRelease(5, k)
	r.m.Files = append(r.m.Files, NewManifestFile("aws.json", "aws", readFeed(f, awsFixture)))
	two := r.build(f)
	f.Add(two.Manifest, two.Signatures[0])
	f.Add([]byte("{}"), []byte("untrusted comment: x\nRUQ=\ntrusted comment: y\nAA==\n"))
	signed := map[string]bool{string(good.Manifest): true, string(two.Manifest): true}
	f.Fuzz(func(t *testing.T, manifest, sig []byte) {
		err := VerifySignatures(manifest, [][]byte{sig}, []minisign.PublicKey{k.pub}, 1)
		if err == nil && !signed[string(manifest)] {
			t.Fatalf("verified a manifest the key never signed: %q", manifest)
		}
		if err != nil && ReasonOf(err) == "" {
			t.Fatalf("signature error without reason: %v", err)
		}
		m, err := ParseManifest(manifest)
		if err != nil {
			if r := ReasonOf(err); r != ReasonBadManifest && r != ReasonTooLarge {
				t.Fatalf("manifest error reason %q: %v", r, err)
			}
			return
		}
		raw, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(raw)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v\n%s", err, raw)
		}
		if m2.Serial != m.Serial || m2.Source != m.Source || len(m2.Files) != len(m.Files) || !m2.Expires.Equal(m.Expires) {
			t.Fatalf("round trip changed the manifest: %+v / %+v", m, m2)
		}
	})
}

// shrinkFeed keeps the first entries of every list in a JSON feed.
func shrinkFeed(f *testing.F, format string, data []byte) []byte {
	if format == "cidr" {
		return nil
	}
	var doc map[string]any
	if err := json.Unmarshal(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")), &doc); err != nil {
		f.Fatal(err)
	}
	var shrink func(v any) any
	shrink = func(v any) any {
		switch v := v.(type) {
		case []any:
			v = v[:min(len(v), 3)]
			for i := range v {
				v[i] = shrink(v[i])
			}
			return v
		case map[string]any:
			for k := range v {
				v[k] = shrink(v[k])
			}
		}
		return v
	}
	out, err := json.Marshal(shrink(doc))
	if err != nil {
		f.Fatal(err)
	}
	if _, err := Parse(format, out); err != nil {
		f.Fatalf("shrunk %s seed: %v", format, err)
	}
	return out
}
