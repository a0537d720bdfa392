package rules

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// feedsDir is shared/testdata/feeds beside the clone: /work/shared next to
// /work/main here, and likewise in CI. A missing directory fails the tests:
// the real files are the point of them.
func feedsDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "shared", "testdata", "feeds")
	if _, err := os.Stat(filepath.Join(dir, "README.md")); err != nil {
		t.Fatalf("real feed files missing (want shared/ beside the clone): %v", err)
	}
	return dir
}

func readFeed(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(feedsDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const (
	awsFixture    = "aws-ip-ranges.2024-07-04.json"
	azureFixture  = "azure-ServiceTags_Public_20250721.json"
	gcpFixture    = "gcp-cloud.json.2025-07-24.json"
	googFixture   = "gcp-goog.json.2024-04-25.json"
	oracleFixture = "oracle-public_ip_ranges.2025-07-21.json"
	cfV4Fixture   = "cloudflare-ips-v4.txt"
	cfV6Fixture   = "cloudflare-ips-v6.txt"
)

// TestRealFeeds parses the vendors' files byte for byte. The expected
// counts were measured with Python's ipaddress.collapse_addresses and jq
// over the same files: entries is what selection keeps (duplicates
// included), agg4/agg6 the aggregated prefixes, cov4 the IPv4 addresses
// covered.
func TestRealFeeds(t *testing.T) {
	tests := []struct {
		name, file, format string
		sel                Selection
		total              int // entries in the file
		entries            int
		agg4, agg6         int
		cov4               uint64
	}{
		{"aws all", awsFixture, "aws", nil, 11846, 11846, 1789, 1019, 78669440},
		{"aws EC2 eu-west-1", awsFixture, "aws", Selection{"service": {"EC2"}, "region": {"eu-west-1"}}, 11846, 87, 50, 24, 5423648},
		{"aws border group", awsFixture, "aws", Selection{"service": {"AMAZON", "CLOUDFRONT"}, "network_border_group": {"us-east-1"}}, 11846, 970, 459, 116, 17735413},
		{"gcp all", gcpFixture, "gcp", nil, 782, 782, 349, 18, 14937472},
		{"gcp scope", gcpFixture, "gcp", Selection{"scope": {"europe-west1"}}, 782, 45, 44, 1, 1100032},
		{"gcp scopes and service", gcpFixture, "gcp", Selection{"scope": {"europe-west1", "europe-west4"}, "service": {"Google Cloud"}}, 782, 75, 72, 2, 1843456},
		{"goog all", googFixture, "gcp", nil, 84, 84, 73, 11, 17982464},
		{"goog has no scope", googFixture, "gcp", Selection{"scope": {"europe-west1"}}, 84, 0, 0, 0, 0},
		{"azure all", azureFixture, "azure", nil, 90493, 90493, 1859, 1161, 47682875},
		{"azure AzureCloud", azureFixture, "azure", Selection{"name": {"AzureCloud"}}, 90493, 12362, 1829, 1268, 47036188},
		{"azure front door", azureFixture, "azure", Selection{"name": {"AzureFrontDoor.Frontend"}}, 90493, 192, 90, 102, 9240},
		{"azure region", azureFixture, "azure", Selection{"region": {"westeurope"}}, 90493, 1601, 408, 54, 4401448},
		{"azure systemService camel case key", azureFixture, "azure", Selection{"systemService": {"AzureStorage"}, "region": {"westeurope"}}, 90493, 96, 95, 1, 21776},
		{"oracle all", oracleFixture, "oracle", nil, 896, 896, 629, 0, 3697802},
		{"oracle tag", oracleFixture, "oracle", Selection{"tags": {"OSN"}}, 896, 396, 320, 0, 340618},
		{"oracle region", oracleFixture, "oracle", Selection{"region": {"eu-frankfurt-1"}}, 896, 58, 58, 0, 354688},
		{"oracle region and tag", oracleFixture, "oracle", Selection{"region": {"eu-frankfurt-1"}, "tags": {"OCI"}}, 896, 42, 42, 0, 329984},
		{"cloudflare v4", cfV4Fixture, "cidr", nil, 15, 15, 15, 0, 1524736},
		{"cloudflare v6", cfV6Fixture, "cidr", nil, 7, 7, 0, 7, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateSelection(tt.format, tt.sel); err != nil {
				t.Fatal(err)
			}
			r, err := Parse(tt.format, readFeed(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if r.Count() != tt.total {
				t.Errorf("entries in file = %d, want %d", r.Count(), tt.total)
			}
			// Every real file passes the default guards.
			if err := (Guards{}).Check(r.All()); err != nil {
				t.Errorf("guards: %v", err)
			}
			sel := r.Select(tt.sel)
			if len(sel) != tt.entries {
				t.Errorf("selected entries = %d, want %d", len(sel), tt.entries)
			}
			agg := Aggregate(sel)
			var n4, n6 int
			for _, p := range agg {
				if p.Addr().Is4() {
					n4++
				} else {
					n6++
				}
			}
			if n4 != tt.agg4 || n6 != tt.agg6 {
				t.Errorf("aggregated = %d IPv4 + %d IPv6, want %d + %d", n4, n6, tt.agg4, tt.agg6)
			}
			if c := CoverageOf(agg); c.V4 != tt.cov4 {
				t.Errorf("IPv4 coverage = %d, want %d", c.V4, tt.cov4)
			}
		})
	}
}

// TestAzureBOMAndLineEndings: the published Azure file uses CRLF; other
// versions begin with a UTF-8 BOM or use LF. All three read alike.
func TestAzureBOMAndLineEndings(t *testing.T) {
	crlf := readFeed(t, azureFixture)
	if !bytes.Contains(crlf[:64], []byte("\r\n")) {
		t.Fatal("fixture is expected to use CRLF")
	}
	variants := map[string][]byte{
		"crlf":     crlf,
		"bom+crlf": append([]byte("\xef\xbb\xbf"), crlf...),
		"lf":       bytes.ReplaceAll(crlf, []byte("\r\n"), []byte("\n")),
	}
	for name, data := range variants {
		r, err := Parse("azure", data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := len(r.Select(Selection{"name": {"AzureCloud"}})); got != 12362 {
			t.Errorf("%s: AzureCloud = %d, want 12362", name, got)
		}
	}
}

func TestCIDRFormat(t *testing.T) {
	mp := netip.MustParsePrefix
	tests := []struct {
		name string
		in   string
		want []netip.Prefix
	}{
		{"no final newline", "8.8.8.0/24\n2606:4700::/32", []netip.Prefix{mp("8.8.8.0/24"), mp("2606:4700::/32")}},
		{"crlf and comments", "# header\r\n8.8.8.0/24 # trailing\r\n\r\n  9.9.9.0/24  \r\n", []netip.Prefix{mp("8.8.8.0/24"), mp("9.9.9.0/24")}},
		{"bom", "\xef\xbb\xbf8.8.8.0/24\n", []netip.Prefix{mp("8.8.8.0/24")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse("cidr", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			got := r.All()
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestParseRefusals: what a broken mirror or proxy serves instead of a feed
// is a parse error, never an empty or partial set.
func TestParseRefusals(t *testing.T) {
	html := []byte("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n")
	real := map[string][]byte{
		"aws":    readFeed(t, awsFixture),
		"gcp":    readFeed(t, gcpFixture),
		"azure":  readFeed(t, azureFixture),
		"oracle": readFeed(t, oracleFixture),
		"cidr":   readFeed(t, cfV4Fixture),
	}
	type tc struct {
		name, format string
		data         []byte
	}
	var tests []tc
	for _, f := range Formats {
		tests = append(tests,
			tc{"html", f, html},
			tc{"empty", f, nil},
			tc{"whitespace", f, []byte(" \r\n\n")},
		)
		if f != "cidr" {
			full := real[f]
			tests = append(tests,
				tc{"truncated half", f, full[:len(full)/2]},
				tc{"truncated last byte", f, bytes.TrimRight(full, "\r\n}")},
				tc{"trailing garbage", f, append(bytes.Clone(full), "{}"...)},
				tc{"empty object", f, []byte("{}")},
				tc{"json array", f, []byte("[]")},
			)
		}
	}
	tests = append(tests,
		tc{"aws v6 in v4 list", "aws", []byte(`{"prefixes":[{"ip_prefix":"2600::/32"}],"ipv6_prefixes":[]}`)},
		tc{"aws bare address", "aws", []byte(`{"prefixes":[{"ip_prefix":"3.5.140.1"}]}`)},
		tc{"aws no prefixes", "aws", []byte(`{"prefixes":[],"ipv6_prefixes":[]}`)},
		tc{"gcp both families", "gcp", []byte(`{"prefixes":[{"ipv4Prefix":"8.8.8.0/24","ipv6Prefix":"2001:4860::/32"}]}`)},
		tc{"gcp neither", "gcp", []byte(`{"prefixes":[{"service":"x"}]}`)},
		tc{"azure missing prefixes", "azure", []byte(`{"values":[{"name":"X","properties":{}}]}`)},
		tc{"azure zone", "azure", []byte(`{"values":[{"name":"X","properties":{"addressPrefixes":["fe80::%eth0/64"]}}]}`)},
		tc{"oracle missing cidrs", "oracle", []byte(`{"regions":[{"region":"x"}]}`)},
		tc{"cidr junk line", "cidr", []byte("8.8.8.0/24\nnot a prefix\n")},
		tc{"cidr only comments", "cidr", []byte("# nothing\n")},
		tc{"cidr bare address", "cidr", []byte("8.8.8.8\n")},
		tc{"unknown format", "bgp", []byte("8.8.8.0/24")},
	)
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.name, func(t *testing.T) {
			r, err := Parse(tt.format, tt.data)
			if err == nil {
				t.Fatalf("parsed %d entries, want a parse error", r.Count())
			}
			if ReasonOf(err) != ReasonParse {
				t.Errorf("reason = %q, want %q (%v)", ReasonOf(err), ReasonParse, err)
			}
		})
	}
}

func TestValidateSelection(t *testing.T) {
	tests := []struct {
		format string
		sel    Selection
		ok     bool
	}{
		{"aws", Selection{"service": {"EC2"}, "region": {"x"}, "network_border_group": {"y"}}, true},
		{"aws", Selection{"scope": {"x"}}, false},
		{"aws", Selection{"service": {}}, false},
		{"gcp", Selection{"scope": {"x"}, "service": {"y"}}, true},
		{"gcp", Selection{"region": {"x"}}, false},
		{"azure", Selection{"name": {"AzureCloud"}, "region": {"x"}, "systemservice": {"y"}}, true},
		{"azure", Selection{"systemService": {"y"}}, true},
		{"azure", Selection{"tags": {"x"}}, false},
		{"oracle", Selection{"region": {"x"}, "tags": {"OCI"}}, true},
		{"oracle", Selection{"service": {"x"}}, false},
		{"cidr", nil, true},
		{"cidr", Selection{"region": {"x"}}, false},
		{"nope", nil, false},
	}
	for _, tt := range tests {
		err := ValidateSelection(tt.format, tt.sel)
		if (err == nil) != tt.ok {
			t.Errorf("%s %v: err = %v, want ok=%v", tt.format, tt.sel, err, tt.ok)
		}
	}
}
