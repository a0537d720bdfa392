package rules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Formats are the feed formats Parse understands, each a provider's file
// exactly as published.
var Formats = []string{"aws", "gcp", "azure", "oracle", "cidr"}

// selectKeys are the selection keys each format offers, lowercase (the
// configuration loader lowercases map keys).
var selectKeys = map[string][]string{
	"aws":    {"network_border_group", "region", "service"},
	"gcp":    {"scope", "service"},
	"azure":  {"name", "region", "systemservice"},
	"oracle": {"region", "tags"},
	"cidr":   {},
}

// SelectKeys returns the selection keys a format offers, or an error for an
// unknown format.
func SelectKeys(format string) ([]string, error) {
	keys, ok := selectKeys[format]
	if !ok {
		return nil, fmt.Errorf("unknown feed format %q (want one of %s)", format, strings.Join(Formats, ", "))
	}
	return slices.Clone(keys), nil
}

// Selection keeps the entries of a feed whose attributes match: every key
// must match (AND), any of a key's values will do (OR). Keys are compared
// case-insensitively, values exactly. An empty Selection keeps everything.
type Selection map[string][]string

// ValidateSelection reports an unknown format, an unknown key for the
// format, or a key without values.
func ValidateSelection(format string, sel Selection) error {
	keys, err := SelectKeys(format)
	if err != nil {
		return err
	}
	for k, vs := range sel {
		if !slices.Contains(keys, strings.ToLower(k)) {
			if len(keys) == 0 {
				return fmt.Errorf("select %q: format %s has no selection keys", k, format)
			}
			return fmt.Errorf("select %q: unknown key for format %s (want %s)", k, format, strings.Join(keys, ", "))
		}
		if len(vs) == 0 {
			return fmt.Errorf("select %q: no values", k)
		}
	}
	return nil
}

// Group is a run of prefixes that share attributes: one AWS or GCP entry,
// one Azure service tag, one Oracle CIDR. Attribute keys are lowercase.
type Group struct {
	Attrs    map[string][]string
	Prefixes []netip.Prefix
}

// Ranges is one parsed feed file.
type Ranges struct {
	Format string
	Groups []Group
}

// Count returns the number of prefix entries, duplicates included.
func (r *Ranges) Count() int {
	n := 0
	for _, g := range r.Groups {
		n += len(g.Prefixes)
	}
	return n
}

// All returns every prefix entry, duplicates included, in file order.
func (r *Ranges) All() []netip.Prefix {
	out := make([]netip.Prefix, 0, r.Count())
	for _, g := range r.Groups {
		out = append(out, g.Prefixes...)
	}
	return out
}

// Select returns the prefix entries of the groups sel keeps, in file
// order, duplicates included. The selection must be valid for the format
// (ValidateSelection); an unknown key matches nothing.
func (r *Ranges) Select(sel Selection) []netip.Prefix {
	if len(sel) == 0 {
		return r.All()
	}
	norm := make(map[string][]string, len(sel))
	for k, vs := range sel {
		norm[strings.ToLower(k)] = vs
	}
	var out []netip.Prefix
	for _, g := range r.Groups {
		if g.matches(norm) {
			out = append(out, g.Prefixes...)
		}
	}
	return out
}

func (g Group) matches(sel map[string][]string) bool {
	for k, want := range sel {
		have := g.Attrs[k]
		hit := false
		for _, h := range have {
			if slices.Contains(want, h) {
				hit = true
				break
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// AttrValues returns, per attribute key, every distinct value with the
// number of prefix entries carrying it: what a selection could keep.
func (r *Ranges) AttrValues() map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, g := range r.Groups {
		for k, vs := range g.Attrs {
			m := out[k]
			if m == nil {
				m = map[string]int{}
				out[k] = m
			}
			for _, v := range vs {
				m[v] += len(g.Prefixes)
			}
		}
	}
	return out
}

// Parse parses one feed file in the given format. It is strict: the file
// must be complete, well-formed and carry at least one prefix, every prefix
// must parse and be of the family its field names. Errors are *Error with
// ReasonParse.
func Parse(format string, data []byte) (*Ranges, error) {
	var (
		groups []Group
		err    error
	)
	switch format {
	case "aws":
		groups, err = parseAWS(data)
	case "gcp":
		groups, err = parseGCP(data)
	case "azure":
		groups, err = parseAzure(data)
	case "oracle":
		groups, err = parseOracle(data)
	case "cidr":
		groups, err = parseCIDR(data)
	default:
		return nil, refuse(ReasonParse, "unknown feed format %q", format)
	}
	if err != nil {
		return nil, &Error{Reason: ReasonParse, Err: fmt.Errorf("%s feed: %w", format, err)}
	}
	r := &Ranges{Format: format, Groups: groups}
	if r.Count() == 0 {
		return nil, refuse(ReasonParse, "%s feed: no prefixes", format)
	}
	return r, nil
}

// decodeJSON decodes exactly one JSON object from data into v.
func decodeJSON(data []byte, v any) error {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("empty document")
	}
	if c := bytes.TrimSpace(data)[0]; c != '{' {
		return fmt.Errorf("not a JSON object (starts with %q)", c)
	}
	// Unmarshal refuses anything after the document, unlike a Decoder.
	return json.Unmarshal(data, v)
}

// prefix parses s as a prefix of the given family (4 or 6).
func prefix(s string, family int) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if family == 4 && !p.Addr().Is4() || family == 6 && !p.Addr().Is6() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv%d prefix", s, family)
	}
	return p, nil
}

func attrs(kv ...string) map[string][]string {
	m := make(map[string][]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = []string{kv[i+1]}
	}
	return m
}

type awsFile struct {
	Prefixes *[]struct {
		IPPrefix string `json:"ip_prefix"`
		Region   string `json:"region"`
		Service  string `json:"service"`
		NBG      string `json:"network_border_group"`
	} `json:"prefixes"`
	IPv6Prefixes []struct {
		IPv6Prefix string `json:"ipv6_prefix"`
		Region     string `json:"region"`
		Service    string `json:"service"`
		NBG        string `json:"network_border_group"`
	} `json:"ipv6_prefixes"`
}

func parseAWS(data []byte) ([]Group, error) {
	var f awsFile
	if err := decodeJSON(data, &f); err != nil {
		return nil, err
	}
	if f.Prefixes == nil {
		return nil, errors.New(`missing "prefixes"`)
	}
	groups := make([]Group, 0, len(*f.Prefixes)+len(f.IPv6Prefixes))
	for i, e := range *f.Prefixes {
		p, err := prefix(e.IPPrefix, 4)
		if err != nil {
			return nil, fmt.Errorf("prefixes[%d]: %w", i, err)
		}
		groups = append(groups, Group{
			Attrs:    attrs("service", e.Service, "region", e.Region, "network_border_group", e.NBG),
			Prefixes: []netip.Prefix{p},
		})
	}
	for i, e := range f.IPv6Prefixes {
		p, err := prefix(e.IPv6Prefix, 6)
		if err != nil {
			return nil, fmt.Errorf("ipv6_prefixes[%d]: %w", i, err)
		}
		groups = append(groups, Group{
			Attrs:    attrs("service", e.Service, "region", e.Region, "network_border_group", e.NBG),
			Prefixes: []netip.Prefix{p},
		})
	}
	return groups, nil
}

type gcpFile struct {
	Prefixes *[]struct {
		IPv4Prefix string `json:"ipv4Prefix"`
		IPv6Prefix string `json:"ipv6Prefix"`
		Service    string `json:"service"`
		Scope      string `json:"scope"`
	} `json:"prefixes"`
}

func parseGCP(data []byte) ([]Group, error) {
	var f gcpFile
	if err := decodeJSON(data, &f); err != nil {
		return nil, err
	}
	if f.Prefixes == nil {
		return nil, errors.New(`missing "prefixes"`)
	}
	groups := make([]Group, 0, len(*f.Prefixes))
	for i, e := range *f.Prefixes {
		var (
			p   netip.Prefix
			err error
		)
		switch {
		case e.IPv4Prefix != "" && e.IPv6Prefix == "":
			p, err = prefix(e.IPv4Prefix, 4)
		case e.IPv6Prefix != "" && e.IPv4Prefix == "":
			p, err = prefix(e.IPv6Prefix, 6)
		default:
			err = errors.New("want exactly one of ipv4Prefix and ipv6Prefix")
		}
		if err != nil {
			return nil, fmt.Errorf("prefixes[%d]: %w", i, err)
		}
		a := map[string][]string{}
		if e.Service != "" {
			a["service"] = []string{e.Service}
		}
		if e.Scope != "" {
			a["scope"] = []string{e.Scope}
		}
		groups = append(groups, Group{Attrs: a, Prefixes: []netip.Prefix{p}})
	}
	return groups, nil
}

type azureFile struct {
	Values *[]struct {
		Name       string `json:"name"`
		Properties *struct {
			Region          string    `json:"region"`
			SystemService   string    `json:"systemService"`
			AddressPrefixes *[]string `json:"addressPrefixes"`
		} `json:"properties"`
	} `json:"values"`
}

func parseAzure(data []byte) ([]Group, error) {
	var f azureFile
	if err := decodeJSON(data, &f); err != nil {
		return nil, err
	}
	if f.Values == nil {
		return nil, errors.New(`missing "values"`)
	}
	groups := make([]Group, 0, len(*f.Values))
	for i, v := range *f.Values {
		if v.Name == "" || v.Properties == nil || v.Properties.AddressPrefixes == nil {
			return nil, fmt.Errorf("values[%d]: want name and properties.addressPrefixes", i)
		}
		ps := make([]netip.Prefix, len(*v.Properties.AddressPrefixes))
		for j, s := range *v.Properties.AddressPrefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("values[%d] (%s) addressPrefixes[%d]: %w", i, v.Name, j, err)
			}
			ps[j] = p
		}
		groups = append(groups, Group{
			Attrs:    attrs("name", v.Name, "region", v.Properties.Region, "systemservice", v.Properties.SystemService),
			Prefixes: ps,
		})
	}
	return groups, nil
}

type oracleFile struct {
	Regions *[]struct {
		Region string `json:"region"`
		CIDRs  *[]struct {
			CIDR string   `json:"cidr"`
			Tags []string `json:"tags"`
		} `json:"cidrs"`
	} `json:"regions"`
}

func parseOracle(data []byte) ([]Group, error) {
	var f oracleFile
	if err := decodeJSON(data, &f); err != nil {
		return nil, err
	}
	if f.Regions == nil {
		return nil, errors.New(`missing "regions"`)
	}
	var groups []Group
	for i, r := range *f.Regions {
		if r.Region == "" || r.CIDRs == nil {
			return nil, fmt.Errorf("regions[%d]: want region and cidrs", i)
		}
		for j, c := range *r.CIDRs {
			p, err := netip.ParsePrefix(c.CIDR)
			if err != nil {
				return nil, fmt.Errorf("regions[%d] (%s) cidrs[%d]: %w", i, r.Region, j, err)
			}
			groups = append(groups, Group{
				Attrs:    map[string][]string{"region": {r.Region}, "tags": c.Tags},
				Prefixes: []netip.Prefix{p},
			})
		}
	}
	return groups, nil
}

// parseCIDR reads one prefix per line; '#' starts a comment, blank lines
// are skipped, CRLF and a missing final newline are fine.
func parseCIDR(data []byte) ([]Group, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var ps []netip.Prefix
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 4096)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		p, err := netip.ParsePrefix(line)
		if err != nil {
			if len(line) > 64 {
				line = line[:64] + "…"
			}
			return nil, fmt.Errorf("line %d: %q is not a prefix", n, line)
		}
		ps = append(ps, p)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return []Group{{Attrs: map[string][]string{}, Prefixes: ps}}, nil
}
