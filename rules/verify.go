package rules

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"aead.dev/minisign"
)

// MaxClockSkew is how far in the future a manifest's issued time may lie.
const MaxClockSkew = 5 * time.Minute

// FeedConfig is one configured feed.
type FeedConfig struct {
	Name   string // also the source name the manifest must carry
	Source string // URL of manifest.json: file:// or https://
	Format string
	Select map[string][]string
	// Keys are the trusted minisign public keys ("RWQ…"); Threshold is the
	// number of distinct ones whose valid signatures a release needs.
	Keys      []string
	Threshold int
	Refresh   time.Duration
	// MaxShrink and MaxGrow bound the change of covered address space per
	// family as a fraction; zero means the default 0.25. Use a tiny value
	// such as 1e-9 to quarantine every change.
	MaxShrink, MaxGrow float64
	// CAFile, when set, is the only CA trusted for an https:// source.
	CAFile string
}

func (fc FeedConfig) maxShrink() float64 { return cmp.Or(fc.MaxShrink, DefaultMaxShrink) }
func (fc FeedConfig) maxGrow() float64   { return cmp.Or(fc.MaxGrow, DefaultMaxGrow) }

// Bundle is one release of a feed as fetched or stored: the raw manifest,
// its signatures and the feed files by manifest name.
type Bundle struct {
	Manifest   []byte
	Signatures [][]byte
	Files      map[string][]byte
}

// Digest is the SHA-256 of the raw manifest: it names a release.
func (b Bundle) Digest() [32]byte { return sha256.Sum256(b.Manifest) }

// Prior is what a feed has in force, for the rollback and no-op checks.
type Prior struct {
	Serial uint64
	Digest [32]byte // of the raw manifest in force
}

// Verified is a release that passed every check up to aggregation.
type Verified struct {
	Bundle   Bundle
	Manifest *Manifest
	Digest   [32]byte
	// Entries is the number of prefix entries in the files; Selected the
	// number selection kept (both with duplicates).
	Entries, Selected int
	// Prefixes is the selected set, aggregated: sorted, disjoint, IPv4
	// first.
	Prefixes []netip.Prefix
	Coverage Coverage
	// Expired is set when the release was verified with IgnoreExpiry and
	// has expired.
	Expired bool
}

// Verifier checks releases of one feed.
type Verifier struct {
	cfg    FeedConfig
	keys   []minisign.PublicKey
	guards Guards
	now    func() time.Time
}

// NewVerifier compiles a feed configuration: known format, valid
// selection, parseable keys, a reachable threshold.
func NewVerifier(cfg FeedConfig, g Guards, now func() time.Time) (*Verifier, error) {
	if !sourceRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("feed name %q: want lowercase letters, digits, '-' or '_'", cfg.Name)
	}
	if err := ValidateSelection(cfg.Format, cfg.Select); err != nil {
		return nil, fmt.Errorf("feed %s: %w", cfg.Name, err)
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Keys) == 0 {
		return nil, fmt.Errorf("feed %s: no trusted keys", cfg.Name)
	}
	v := &Verifier{cfg: cfg, guards: g, now: now}
	for i, s := range cfg.Keys {
		k, err := ParsePublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("feed %s: key %d: %w", cfg.Name, i+1, err)
		}
		for _, o := range v.keys {
			if o.Equal(k) {
				return nil, fmt.Errorf("feed %s: key %d (%016X) is listed twice", cfg.Name, i+1, k.ID())
			}
		}
		v.keys = append(v.keys, k)
	}
	if cfg.Threshold < 1 || cfg.Threshold > len(v.keys) {
		return nil, fmt.Errorf("feed %s: threshold %d: want 1..%d", cfg.Name, cfg.Threshold, len(v.keys))
	}
	if cfg.MaxShrink < 0 || cfg.MaxShrink > 1 || cfg.MaxGrow < 0 {
		return nil, fmt.Errorf("feed %s: max_shrink must be in 0..1 and max_grow not negative", cfg.Name)
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v, nil
}

// VerifyOptions relax checks for re-verifying what is already in force.
type VerifyOptions struct {
	// IgnoreExpiry accepts an expired release and sets Verified.Expired:
	// an expired feed stays enforced rather than emptying an allow-list.
	IgnoreExpiry bool
}

// VerifyManifest runs the checks that need only the manifest, in order:
// size, signatures over the raw bytes, strict parse, source name, expiry
// and skew, serial against prior (nil: nothing in force). It returns
// ErrUnchanged for the release already in force.
func (v *Verifier) VerifyManifest(raw []byte, sigs [][]byte, prior *Prior, opts VerifyOptions) (*Manifest, bool, error) {
	if len(raw) > MaxManifestSize {
		return nil, false, refuse(ReasonTooLarge, "manifest is %d bytes, limit %d", len(raw), MaxManifestSize)
	}
	for i, s := range sigs {
		if len(s) > MaxSignatureSize {
			return nil, false, refuse(ReasonTooLarge, "%s is %d bytes, limit %d", SignatureName(i+1), len(s), MaxSignatureSize)
		}
	}
	if err := VerifySignatures(raw, sigs, v.keys, v.cfg.Threshold); err != nil {
		return nil, false, err
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return nil, false, err
	}
	if m.Source != v.cfg.Name {
		return nil, false, refuse(ReasonWrongSource, "manifest is for source %q, not %q", m.Source, v.cfg.Name)
	}
	for _, f := range m.Files {
		if f.Format != v.cfg.Format {
			return nil, false, refuse(ReasonBadManifest, "file %s has format %s, the feed is configured as %s", f.Name, f.Format, v.cfg.Format)
		}
	}
	now := v.now()
	expired := !now.Before(m.Expires)
	if expired && !opts.IgnoreExpiry {
		return nil, false, refuse(ReasonExpired, "release %d expired at %s", m.Serial, m.Expires.UTC().Format(time.RFC3339))
	}
	if m.Issued.After(now.Add(MaxClockSkew)) {
		return nil, false, refuse(ReasonNotYetValid, "release %d is issued %s, in the future", m.Serial, m.Issued.UTC().Format(time.RFC3339))
	}
	if prior != nil {
		switch {
		case m.Serial < prior.Serial:
			return nil, false, refuse(ReasonRollback, "serial %d is lower than %d in force", m.Serial, prior.Serial)
		case m.Serial == prior.Serial && sha256.Sum256(raw) == prior.Digest:
			return m, expired, ErrUnchanged
		case m.Serial == prior.Serial:
			return nil, false, refuse(ReasonSerialReuse, "serial %d is in force with a different manifest", m.Serial)
		}
	}
	return m, expired, nil
}

// VerifyPayload runs the checks on the files a verified manifest names, in
// order: length and SHA-256, strict parse, guards on every prefix, then
// selection and aggregation. An empty selection result is refused.
func (v *Verifier) VerifyPayload(m *Manifest, files map[string][]byte) (*Verified, error) {
	for _, f := range m.Files {
		data, ok := files[f.Name]
		if !ok {
			return nil, refuse(ReasonFetch, "file %s missing", f.Name)
		}
		if int64(len(data)) != f.Length {
			return nil, refuse(ReasonHashMismatch, "file %s is %d bytes, manifest says %d", f.Name, len(data), f.Length)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != f.SHA256 {
			return nil, refuse(ReasonHashMismatch, "file %s: SHA-256 differs from the manifest", f.Name)
		}
	}
	ver := &Verified{Manifest: m}
	var selected []netip.Prefix
	for _, f := range m.Files {
		r, err := Parse(f.Format, files[f.Name])
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Name, err)
		}
		for _, g := range r.Groups {
			if err := v.guards.Check(g.Prefixes); err != nil {
				return nil, fmt.Errorf("file %s: %w", f.Name, err)
			}
		}
		ver.Entries += r.Count()
		s := r.Select(v.cfg.Select)
		ver.Selected += len(s)
		selected = append(selected, s...)
	}
	if len(selected) == 0 {
		return nil, refuse(ReasonEmpty, "selection keeps no prefix of %d", ver.Entries)
	}
	ver.Prefixes = Aggregate(selected)
	ver.Coverage = CoverageOf(ver.Prefixes)
	return ver, nil
}

// Verify runs every check on a whole bundle (VerifyManifest then
// VerifyPayload). The coverage guard is the caller's: it needs the set in
// force (CheckCoverage).
func (v *Verifier) Verify(b Bundle, prior *Prior, opts VerifyOptions) (*Verified, error) {
	m, expired, err := v.VerifyManifest(b.Manifest, b.Signatures, prior, opts)
	if err != nil && !errors.Is(err, ErrUnchanged) {
		return nil, err
	}
	unchanged := err != nil
	ver, perr := v.VerifyPayload(m, b.Files)
	if perr != nil {
		return nil, perr
	}
	ver.Bundle, ver.Digest, ver.Expired = b, b.Digest(), expired
	if unchanged {
		return ver, ErrUnchanged
	}
	return ver, nil
}
