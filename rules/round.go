package rules

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Cycle runs one fetch-verify-apply round for feed name: what Run does on
// every refresh. A refusal is logged once, counted, and returned; nil
// means applied, deferred or unchanged.
func (m *Manager) Cycle(ctx context.Context, name string, onUpdate ApplyFunc) error {
	f, err := m.feed(name)
	if err != nil {
		return err
	}
	_, err = m.cycle(ctx, f, onUpdate)
	return err
}

// fetched is what a round found on the mirror, ready to apply.
type fetched struct {
	result string // ResultApplied, ResultAccepted or ResultUnchanged
	ver    *Verified
	val    *validators           // of the manifest
	files  map[string]validators // of the files, for checkMirror
}

// cycle is Cycle for one feed, and says what came of it. The rounds of one
// feed never overlap (the refresh loop and an admin's Refresh). A round
// cut short because ctx ended (the daemon stopping) is abandoned: neither
// counted nor recorded as the feed's latest result.
func (m *Manager) cycle(ctx context.Context, f *feed, onUpdate ApplyFunc) (o Outcome, err error) {
	f.cycleMu.Lock()
	defer f.cycleMu.Unlock()
	defer m.checkExpiry(f)
	name := f.cfg.Name
	log := m.log.With("feed", name)
	res, err := m.fetchAndVerify(ctx, f)
	if err != nil && ctx.Err() != nil {
		log.Debug("feed round abandoned", "err", err)
		return Outcome{Feed: name, Error: "abandoned: " + ctx.Err().Error()}, err
	}
	result, ver := res.result, res.ver
	defer func() {
		m.record(f, result, err)
		o = m.outcome(f, result, ver, err)
	}()
	if err != nil {
		r := ReasonOf(err)
		if r == "" {
			r = ReasonFetch
		}
		result = string(r)
		m.count(f, string(r))
		switch r {
		case ReasonSerialReuse:
			log.Error("feed update refused: serial reused with different content (ALERT: possible key compromise or publisher error)", "reason", r, "err", err)
		case ReasonMirrorMismatch:
			log.Error("feed mirror serves a file that differs from the signed release in force (corrupted or tampered mirror); the release in force stays", "reason", r, "err", err)
		case ReasonMirrorUnsettled:
			log.Info("feed mirror serves a file that differs from the signed release in force (a publish in progress?); checked again at the next refresh, refused if it still does", "reason", r, "err", err)
		case ReasonQuarantined:
			log.Warn("feed update held in quarantine; run `gatehouse feed accept "+name+"` to apply it", "reason", r, "serial", ver.Manifest.Serial, "err", err)
		default:
			log.Warn("feed update refused; last known good stays in force", "reason", r, "err", err)
		}
		return o, err
	}
	if result == ResultUnchanged {
		m.count(f, ResultUnchanged)
		log.Debug("feed unchanged")
		return o, nil
	}
	err = m.apply(f, ver, result, onUpdate)
	if r := ReasonOf(err); r != "" {
		result = string(r)
	}
	f.mu.Lock()
	switch {
	case err == nil && f.deferred == ver:
		// Not in force: the next round fetches it again, in full.
		result = ResultDeferred
	case err == nil || ReasonOf(err) == ReasonStore:
		// Remember the validators only once the release is in force, so
		// that a release the daemon failed to apply is fetched again.
		f.val, f.fileVal = res.val, res.files
	}
	f.mu.Unlock()
	return o, err
}

// record keeps the outcome of the latest attempt for status.
func (m *Manager) record(f *feed, result string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastResult, f.lastErr = result, ""
	if err != nil {
		f.lastErr = err.Error()
	}
}

// fetchAndVerify returns ResultUnchanged, or a release ready to apply
// (result ResultApplied or ResultAccepted) with the cache validators of
// its manifest and files, or a refusal. A quarantined release is returned
// with its refusal.
func (m *Manager) fetchAndVerify(ctx context.Context, f *feed) (fetched, error) {
	f.mu.Lock()
	cur, floor, val := f.current, f.floor, f.val
	f.mu.Unlock()
	var prior *Prior
	if cur != nil {
		prior = &Prior{Serial: cur.Manifest.Serial, Digest: cur.Digest}
	}
	floorPath := m.floorPath(f.cfg.Name)

	raw, newVal, notModified, err := f.fetch.get(ctx, ManifestName, MaxManifestSize, val)
	if err != nil {
		return fetched{}, fetchErr(ManifestName, err)
	}
	var man *Manifest
	var sigs [][]byte
	if !notModified {
		man, sigs, err = m.verifyManifest(ctx, f, raw, prior)
	}
	if notModified || errors.Is(err, ErrUnchanged) {
		// The mirror serves the release in force. When that is the
		// previous release (the last known good was lost), it serves a
		// rollback below the floor, not an unchanged feed. Both need a
		// release in force; without one, "unchanged" is a mirror fault.
		if cur == nil {
			return fetched{}, fetchErr(ManifestName, errors.New("the mirror answered unchanged, but no release is in force"))
		}
		if ferr := checkFloor(floor, cur.Manifest.Serial, cur.Digest, floorPath); ferr != nil {
			return fetched{}, ferr
		}
		merr := m.checkMirror(ctx, f)
		if merr == nil {
			if notModified {
				m.markSuccess(f, val)
			} else {
				m.markSuccess(f, &newVal)
			}
			return fetched{result: ResultUnchanged}, nil
		}
		if ReasonOf(merr) != ReasonMirrorMismatch {
			return fetched{}, merr
		}
		// Before calling the mirror inconsistent, read its manifest once
		// more, past any cache validator: a release published meanwhile
		// is a new release, not a mismatch.
		raw, newVal, _, err = f.fetch.get(ctx, ManifestName, MaxManifestSize, nil)
		if err != nil {
			return fetched{}, fetchErr(ManifestName, err)
		}
		if sha256.Sum256(raw) == cur.Digest {
			return fetched{}, m.mismatch(f, merr)
		}
		man, sigs, err = m.verifyManifest(ctx, f, raw, prior)
	}
	if err != nil {
		return fetched{}, err
	}
	b := Bundle{Manifest: raw, Signatures: sigs, Files: map[string][]byte{}}
	if err := checkFloor(floor, man.Serial, b.Digest(), floorPath); err != nil {
		return fetched{}, err
	}
	files := map[string]validators{}
	for _, mf := range man.Files {
		data, fv, _, err := f.fetch.get(ctx, mf.Name, min(mf.Length, MaxFileSize), nil)
		if err != nil {
			if ReasonOf(err) == ReasonTooLarge {
				return fetched{}, &Error{Reason: ReasonHashMismatch, Err: fmt.Errorf("file %s: longer than the manifest's %d bytes", mf.Name, mf.Length)}
			}
			return fetched{}, fetchErr(mf.Name, err)
		}
		b.Files[mf.Name] = data
		if fv != (validators{}) {
			files[mf.Name] = fv
		}
	}
	ver, err := f.v.VerifyPayload(man, b.Files)
	if err != nil {
		return fetched{}, err
	}
	ver.Bundle, ver.Digest = b, b.Digest()
	ver.Manifest = man

	// The admin's consent to exactly this release (gatehouse feed accept)
	// lets it past the coverage guard, here and in the daemon.
	accepted, ok, aerr := m.store.ReadAccept(f.cfg.Name)
	if aerr != nil {
		m.log.Warn("cannot read feed acceptance", "feed", f.cfg.Name, "err", aerr)
	}
	consent := ok && accepted == ver.Digest
	result := ResultApplied
	if cur != nil {
		if cerr := CheckCoverage(cur.Coverage, ver.Coverage, f.cfg.maxShrink(), f.cfg.maxGrow()); cerr != nil {
			if !consent {
				m.quarantine(f, ver)
				return fetched{ver: ver}, cerr
			}
			result = ResultAccepted
		}
	}
	if consent && cur == nil {
		result = ResultAccepted
	}
	return fetched{result: result, ver: ver, val: &newVal, files: files}, nil
}

// verifyManifest fetches the signatures of raw and verifies it against
// prior (ErrUnchanged: it is the release in force).
func (m *Manager) verifyManifest(ctx context.Context, f *feed, raw []byte, prior *Prior) (*Manifest, [][]byte, error) {
	var sigs [][]byte
	for i := 1; i <= len(f.cfg.Keys) && i <= MaxSignatures; i++ {
		s, _, _, err := f.fetch.get(ctx, SignatureName(i), MaxSignatureSize, nil)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fetchErr(SignatureName(i), err)
		}
		sigs = append(sigs, s)
	}
	man, _, err := f.v.VerifyManifest(raw, sigs, prior, VerifyOptions{})
	return man, sigs, err
}

func fetchErr(name string, err error) error {
	if ReasonOf(err) != "" {
		return err
	}
	return &Error{Reason: ReasonFetch, Err: fmt.Errorf("fetch %s: %w", name, err)}
}

func (m *Manager) markSuccess(f *feed, val *validators) {
	f.mu.Lock()
	f.lastSuccess = m.now()
	f.unsettled = false
	if val != nil {
		f.val = val
	}
	f.mu.Unlock()
}
