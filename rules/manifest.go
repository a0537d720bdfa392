package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"aead.dev/minisign"
)

// Size limits, checked before anything is parsed.
const (
	MaxManifestSize  = 64 << 10
	MaxSignatureSize = 4 << 10
	MaxFileSize      = 64 << 20
	MaxFiles         = 16
	MaxSignatures    = 16
)

// ManifestName is the file name of a bundle's manifest; its signatures are
// ManifestName+".minisig", ManifestName+".minisig.2", …
const ManifestName = "manifest.json"

// SignatureName returns the file name of the i-th signature (from 1).
func SignatureName(i int) string {
	if i <= 1 {
		return ManifestName + ".minisig"
	}
	return fmt.Sprintf("%s.minisig.%d", ManifestName, i)
}

// Manifest describes one signed release of a feed.
type Manifest struct {
	Source  string         `json:"source"`
	Serial  uint64         `json:"serial"`
	Issued  time.Time      `json:"issued"`
	Expires time.Time      `json:"expires"`
	Files   []ManifestFile `json:"files"`
}

// ManifestFile is one feed file of a release.
type ManifestFile struct {
	Name   string `json:"name"`
	Format string `json:"format"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
}

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	sourceRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	hexSHA256  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ParseManifest decodes a manifest strictly: no unknown or missing fields,
// nothing after the object, safe unique file names, known formats. Only
// call it on bytes whose signature has been verified. Errors are *Error
// with ReasonBadManifest.
func ParseManifest(raw []byte) (*Manifest, error) {
	if len(raw) > MaxManifestSize {
		return nil, refuse(ReasonTooLarge, "manifest is %d bytes, limit %d", len(raw), MaxManifestSize)
	}
	var m struct {
		Source  *string         `json:"source"`
		Serial  *uint64         `json:"serial"`
		Issued  *time.Time      `json:"issued"`
		Expires *time.Time      `json:"expires"`
		Files   *[]ManifestFile `json:"files"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, refuse(ReasonBadManifest, "manifest: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, refuse(ReasonBadManifest, "manifest: %v", errors.New("data after the JSON document"))
	}
	switch {
	case m.Source == nil || m.Serial == nil || m.Issued == nil || m.Expires == nil || m.Files == nil:
		return nil, refuse(ReasonBadManifest, "manifest: want source, serial, issued, expires and files")
	case !sourceRE.MatchString(*m.Source):
		return nil, refuse(ReasonBadManifest, "manifest: source %q: want lowercase letters, digits, '-' or '_'", *m.Source)
	case *m.Serial == 0:
		return nil, refuse(ReasonBadManifest, "manifest: serial must be positive")
	case !m.Expires.After(*m.Issued):
		return nil, refuse(ReasonBadManifest, "manifest: expires %s is not after issued %s", m.Expires.Format(time.RFC3339), m.Issued.Format(time.RFC3339))
	case len(*m.Files) == 0 || len(*m.Files) > MaxFiles:
		return nil, refuse(ReasonBadManifest, "manifest: want 1..%d files, got %d", MaxFiles, len(*m.Files))
	}
	seen := map[string]bool{}
	for i, f := range *m.Files {
		switch {
		case !fileNameRE.MatchString(f.Name) || strings.HasPrefix(f.Name, ManifestName):
			return nil, refuse(ReasonBadManifest, "manifest: files[%d]: bad name %q", i, f.Name)
		case seen[f.Name]:
			return nil, refuse(ReasonBadManifest, "manifest: files[%d]: duplicate name %q", i, f.Name)
		case !slices.Contains(Formats, f.Format):
			return nil, refuse(ReasonBadManifest, "manifest: files[%d]: unknown format %q", i, f.Format)
		case f.Length <= 0 || f.Length > MaxFileSize:
			return nil, refuse(ReasonBadManifest, "manifest: files[%d]: length %d: want 1..%d", i, f.Length, MaxFileSize)
		case !hexSHA256.MatchString(f.SHA256):
			return nil, refuse(ReasonBadManifest, "manifest: files[%d]: sha256 must be 64 lowercase hex digits", i)
		}
		seen[f.Name] = true
	}
	return &Manifest{Source: *m.Source, Serial: *m.Serial, Issued: *m.Issued, Expires: *m.Expires, Files: *m.Files}, nil
}

// Marshal encodes the manifest as it is signed: indented JSON with a final
// newline, times in UTC.
func (m *Manifest) Marshal() ([]byte, error) {
	c := *m
	c.Issued, c.Expires = c.Issued.UTC(), c.Expires.UTC()
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// NewManifestFile describes a feed file for a manifest.
func NewManifestFile(name, format string, data []byte) ManifestFile {
	sum := sha256.Sum256(data)
	return ManifestFile{Name: name, Format: format, Length: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

// ParsePublicKey reads a minisign public key: the base64 line ("RWQ…") or
// the whole .pub file with its untrusted comment.
func ParsePublicKey(s string) (minisign.PublicKey, error) {
	var k minisign.PublicKey
	s = strings.TrimSpace(s)
	if lines := strings.Split(s, "\n"); len(lines) == 2 && strings.HasPrefix(lines[0], "untrusted comment:") {
		s = strings.TrimSpace(lines[1])
	}
	if err := k.UnmarshalText([]byte(s)); err != nil {
		return minisign.PublicKey{}, fmt.Errorf("minisign public key: %w", err)
	}
	return k, nil
}

// SignManifest signs raw manifest bytes with the prehashed Ed25519 scheme
// (minisign's default, algorithm "ED") and returns the .minisig contents.
func SignManifest(raw []byte, key minisign.PrivateKey, trustedComment string) []byte {
	r := minisign.NewReader(bytes.NewReader(raw))
	_, _ = io.Copy(io.Discard, r) // reading a bytes.Reader cannot fail
	untrusted := fmt.Sprintf("signature from gatehouse secret key %016X", key.ID())
	return r.SignWithComments(key, trustedComment, untrusted)
}

var errLegacySignature = errors.New("legacy (not prehashed) signature algorithm refused")

// VerifySignatures checks sigs over the raw message and succeeds when at
// least threshold distinct trusted keys made a valid prehashed signature.
// Signatures by unknown keys or with the legacy algorithm do not count.
// The error is an *Error with ReasonBadSignature (or ReasonTooLarge).
func VerifySignatures(raw []byte, sigs [][]byte, keys []minisign.PublicKey, threshold int) error {
	if threshold < 1 {
		return refuse(ReasonBadSignature, "threshold %d: want at least 1", threshold)
	}
	if len(sigs) > MaxSignatures {
		return refuse(ReasonTooLarge, "%d signatures, limit %d", len(sigs), MaxSignatures)
	}
	r := minisign.NewReader(bytes.NewReader(raw))
	_, _ = io.Copy(io.Discard, r)
	valid := make([]bool, len(keys))
	var problems []string
	for i, sig := range sigs {
		if len(sig) > MaxSignatureSize {
			return refuse(ReasonTooLarge, "%s is %d bytes, limit %d", SignatureName(i+1), len(sig), MaxSignatureSize)
		}
		var s minisign.Signature
		if err := s.UnmarshalText(sig); err != nil {
			problems = append(problems, fmt.Sprintf("%s: malformed", SignatureName(i+1)))
			continue
		}
		if s.Algorithm != minisign.HashEdDSA {
			problems = append(problems, fmt.Sprintf("%s: %v", SignatureName(i+1), errLegacySignature))
			continue
		}
		matched := false
		for j, k := range keys {
			if k.ID() == s.KeyID && r.Verify(k, sig) {
				valid[j] = true
				matched = true
			}
		}
		if !matched {
			problems = append(problems, fmt.Sprintf("%s: no trusted key %016X verifies it", SignatureName(i+1), s.KeyID))
		}
	}
	// Distinct keys: the same key listed twice counts once.
	var good []minisign.PublicKey
	for j, k := range keys {
		if valid[j] && !slices.ContainsFunc(good, func(g minisign.PublicKey) bool { return g.Equal(k) }) {
			good = append(good, k)
		}
	}
	if len(good) < threshold {
		msg := fmt.Sprintf("%d of %d required valid signatures by distinct trusted keys", len(good), threshold)
		if len(problems) > 0 {
			msg += " (" + strings.Join(problems, "; ") + ")"
		}
		return &Error{Reason: ReasonBadSignature, Err: errors.New(msg)}
	}
	return nil
}
