package rules

import (
	"errors"
	"fmt"
)

// Reason is the bounded label a refused or failed feed update is counted
// under in gatehouse_feed_updates_total{result}.
type Reason string

// Reasons a feed update is refused. The set is closed: metrics use it as a
// label value.
const (
	ReasonFetch        Reason = "fetch_error"
	ReasonTooLarge     Reason = "too_large"
	ReasonBadSignature Reason = "bad_signature"
	ReasonBadManifest  Reason = "bad_manifest"
	ReasonWrongSource  Reason = "wrong_source"
	ReasonExpired      Reason = "expired"
	ReasonNotYetValid  Reason = "not_yet_valid"
	ReasonRollback     Reason = "rollback"
	ReasonSerialReuse  Reason = "serial_reuse"
	ReasonHashMismatch Reason = "hash_mismatch"
	ReasonParse        Reason = "parse_error"
	ReasonNotCanonical Reason = "not_canonical"
	ReasonTooBroad     Reason = "too_broad"
	ReasonBogon        Reason = "bogon"
	ReasonEmpty        Reason = "empty"
	ReasonQuarantined  Reason = "quarantined"
	ReasonApply        Reason = "apply_failed"
	ReasonStore        Reason = "store_error"
	// ReasonMirrorMismatch: the mirror still serves the manifest in force
	// but a file that no longer matches it (corrupted or tampered with),
	// on two checks in a row.
	ReasonMirrorMismatch Reason = "mirror_mismatch"
	// ReasonMirrorUnsettled: the first such check. A publisher that
	// uploads the files before the manifest, or a cache that keeps the
	// manifest longer than the files, looks like this for a while; the
	// feed is checked again at its next refresh, and only a second
	// mismatch in a row is refused as ReasonMirrorMismatch.
	ReasonMirrorUnsettled Reason = "mirror_unsettled"
)

// reasons is every Reason, in the order above.
var reasons = []Reason{ReasonFetch, ReasonTooLarge, ReasonBadSignature, ReasonBadManifest, ReasonWrongSource,
	ReasonExpired, ReasonNotYetValid, ReasonRollback, ReasonSerialReuse, ReasonHashMismatch, ReasonParse,
	ReasonNotCanonical, ReasonTooBroad, ReasonBogon, ReasonEmpty, ReasonQuarantined, ReasonApply, ReasonStore,
	ReasonMirrorMismatch, ReasonMirrorUnsettled}

// Results that are not refusals.
const (
	ResultApplied   = "applied"
	ResultUnchanged = "unchanged"
	ResultAccepted  = "accepted"
	// ResultDeferred: the release verified, but the daemon could not put
	// it in force in the kernel yet (ErrDeferred); it is not committed.
	ResultDeferred = "deferred"
)

// UpdateResults is every value of gatehouse_feed_updates_total's result
// label: the four results, then every Reason. The set is closed, so each
// feed's series can exist, at 0, before anything happens.
func UpdateResults() []string {
	out := []string{ResultApplied, ResultUnchanged, ResultAccepted, ResultDeferred}
	for _, r := range reasons {
		out = append(out, string(r))
	}
	return out
}

// Error is a refused feed update: Reason for metrics and callers that
// branch, Err for the log line.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// refuse builds an *Error with a formatted message.
func refuse(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the Reason of a refusal, or "" when err is not one.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

var (
	// ErrUnchanged is returned when an update carries the serial and the
	// exact manifest already in force: nothing to do, not a failure.
	ErrUnchanged = errors.New("feed unchanged")
	// ErrUnknownFeed is returned for a feed name the configuration lacks.
	ErrUnknownFeed = errors.New("unknown feed")
	// ErrNothingQuarantined is returned by Accept when no update waits.
	ErrNothingQuarantined = errors.New("no update in quarantine")
	// ErrDeferred is what an ApplyFunc returns for a release it took but
	// could not yet put in force everywhere (kernel layers that keep a
	// previous run's ranges until every feed has a release). The release
	// is not committed as last known good; it is committed once the
	// daemon applies a generation with it (a later ApplyFunc returning nil).
	ErrDeferred = errors.New("release verified; not in force in the kernel layers yet")
)
