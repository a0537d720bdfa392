package rules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// checkMirror reads again, from the mirror, the files of the release in
// force, when the mirror still serves its manifest. A mirror that answers
// with the manifest in force and a file that no longer matches it (a
// corrupted disk, a half-finished sync, a tampered copy) would otherwise
// look healthy until the next release fails to fetch. The release in force
// stays either way; the mismatch is refused as ReasonMirrorMismatch, so it
// is counted and logged and the feed's last success does not advance.
//
// A file whose cache validators still match is not downloaded again (an
// https mirror answers 304; the validators are those of the download that
// applied the release); a file:// mirror, or an https one that sends no
// ETag or Last-Modified, is read every time.
//
// A publisher that uploads the files before the manifest, or a cache that
// keeps the manifest longer than the files, looks the same for a while:
// so the caller reads the manifest once more before calling it a
// mismatch, and the first mismatch is only ReasonMirrorUnsettled (see
// mismatch).
func (m *Manager) checkMirror(ctx context.Context, f *feed) error {
	f.mu.Lock()
	cur := f.current
	known := f.fileVal
	f.mu.Unlock()
	if cur == nil {
		return nil
	}
	seen := map[string]validators{}
	for _, mf := range cur.Manifest.Files {
		var val *validators
		if v, ok := known[mf.Name]; ok {
			val = &v
		}
		data, nv, notModified, err := f.fetch.get(ctx, mf.Name, min(mf.Length, MaxFileSize), val)
		switch {
		case errors.Is(err, errNotFound):
			return mirrorMismatch(cur, mf.Name, "missing")
		case ReasonOf(err) == ReasonTooLarge:
			return mirrorMismatch(cur, mf.Name, fmt.Sprintf("longer than the manifest's %d bytes", mf.Length))
		case err != nil:
			return fetchErr(mf.Name, err)
		case notModified:
			seen[mf.Name] = *val
			continue
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != mf.Length || hex.EncodeToString(sum[:]) != mf.SHA256 {
			return mirrorMismatch(cur, mf.Name, fmt.Sprintf("%d bytes with SHA-256 %x, the manifest says %d bytes with %s",
				len(data), sum[:8], mf.Length, mf.SHA256[:16]))
		}
		if nv != (validators{}) {
			seen[mf.Name] = nv
		}
	}
	f.mu.Lock()
	if f.current == cur {
		f.fileVal = seen
	}
	f.mu.Unlock()
	return nil
}

func mirrorMismatch(cur *Verified, file, what string) error {
	return refuse(ReasonMirrorMismatch, "the mirror serves the manifest of serial %d in force but file %s is %s",
		cur.Manifest.Serial, file, what)
}

// mismatch turns a mirror mismatch into the refusal it counts as: the
// first one in a row is ReasonMirrorUnsettled (checked again at the next
// refresh), a second one in a row ReasonMirrorMismatch.
func (m *Manager) mismatch(f *feed, merr error) error {
	f.mu.Lock()
	again := f.unsettled
	f.unsettled = true
	f.mu.Unlock()
	if again {
		return merr
	}
	var e *Error
	errors.As(merr, &e)
	return &Error{Reason: ReasonMirrorUnsettled, Err: e.Err}
}
