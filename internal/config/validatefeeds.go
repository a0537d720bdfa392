package config

import (
	"fmt"
	"net/netip"
	"net/url"
)

// The admitted sources: static_ranges and the signed feeds.

// validateStaticRanges refuses a static range broader than the feeds'
// min_prefix guard (a /0 admits the whole Internet) unless the admin said
// rules.broad_static_ranges: true.
func (cfg *Config) validateStaticRanges(c *checker) {
	for i, s := range cfg.StaticRanges {
		p, err := parsePrefix(s)
		if err != nil {
			c.add(fmt.Sprintf("static_ranges[%d]", i), "%v", err)
			continue
		}
		min, key := cfg.Rules.MinPrefix.V6, "v6"
		if p.Addr().Is4() {
			min, key = cfg.Rules.MinPrefix.V4, "v4"
		}
		if !cfg.Rules.BroadStaticRanges && (p.Bits() == 0 || p.Bits() < min) {
			c.add(fmt.Sprintf("static_ranges[%d]", i), "%s is broader than rules.min_prefix.%s (/%d) and would admit %s; set rules.broad_static_ranges: true if that is meant",
				p, key, min, broadness(p))
		}
	}
}

func broadness(p netip.Prefix) string {
	if p.Bits() == 0 {
		return "every address of the Internet"
	}
	return "a large part of the Internet"
}

// ReservedFeedNames are the admitted sources that are not feeds, by the
// name gatehouse_admitted_prefixes{feed} gives them: a feed named so would
// replace static_ranges in the admitted set, or share the aggregate's
// series.
var ReservedFeedNames = map[string]string{"static": "static_ranges", "all": "the aggregate in force"}

func (cfg *Config) validateFeeds(c *checker) {
	names := map[string]string{}
	for i, f := range cfg.Feeds {
		p := fmt.Sprintf("feeds[%d]", i)
		if what, ok := ReservedFeedNames[f.Name]; ok {
			c.add(p+".name", "%q is reserved (gatehouse_admitted_prefixes{feed=%q} names %s)", f.Name, f.Name, what)
		} else {
			c.name(p+".name", names, f.Name, "feed")
		}
		// As rules' fetcher takes it: https with a host, or file:/// with a
		// path and no host (file://etc/x would name host "etc").
		if u, err := url.Parse(f.Source); err != nil || !(u.Scheme == "https" && u.Host != "" || u.Scheme == "file" && u.Host == "" && u.Path != "") {
			c.add(p+".source", "must be an https:// URL or a file:/// path of a manifest, got %q", f.Source)
		}
		c.oneOf(p+".format", f.Format, FeedFormats...)
		if len(f.MinisignKeys) == 0 {
			c.add(p+".minisign_keys", "at least one trusted public key is required")
		}
		if f.Threshold < 1 || f.Threshold > len(f.MinisignKeys) {
			c.add(p+".threshold", "must be between 1 and the number of minisign_keys (%d), got %d", len(f.MinisignKeys), f.Threshold)
		}
		if f.Refresh < MinFeedRefresh {
			// Said in full: the bare minimum reads as arbitrary.
			c.add(p+".refresh", "must be at least %s, got %s: a shorter interval only hammers the mirror and the admin who signs "+
				"releases, and makes no release arrive sooner than it is published; to fetch a change now, run "+
				"`gatehouse feed refresh %s`", MinFeedRefresh, f.Refresh, f.Name)
		}
		// 0 would read as "the default" further down; a change bound of
		// nothing is a tiny number, not 0.
		if v := f.MaxShrink; v != nil && (*v <= 0 || *v > 1) {
			c.add(p+".max_shrink", "must be above 0 and at most 1 (leave it out for the default 0.25; 0.0001 quarantines nearly any shrink), got %g", *v)
		}
		if v := f.MaxGrow; v != nil && *v <= 0 {
			c.add(p+".max_grow", "must be above 0 (leave it out for the default 0.25), got %g", *v)
		}
		c.file(p+".ca", f.CA, false)
	}
}
