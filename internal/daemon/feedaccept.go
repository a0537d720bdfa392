package daemon

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// ErrNothingToAccept is returned by AcceptQuarantined when the feed has
// no release in quarantine, or only an expired one.
var ErrNothingToAccept = errors.New("nothing to accept")

// Accepted is the release an admin's feed accept consented to.
type Accepted struct {
	Feed   string   `json:"feed"`
	Serial uint64   `json:"serial"`
	SHA256 [32]byte `json:"-"`
	Digest string   `json:"manifest_sha256"`
}

// AcceptQuarantined records in stateDir the admin's consent to exactly the
// release of feed name held in quarantine (by the SHA-256 of its
// manifest); the daemon applies it within seconds. `gatehouse feed accept`
// does this locally and the admin API for the running daemon.
func AcceptQuarantined(stateDir, name string, now time.Time) (Accepted, error) {
	st, err := rules.OpenStore(stateDir)
	if err != nil {
		return Accepted{}, err
	}
	b, err := st.LoadQuarantine(name)
	if errors.Is(err, os.ErrNotExist) {
		return Accepted{}, fmt.Errorf("feed %s: %w: %w", name, ErrNothingToAccept, rules.ErrNothingQuarantined)
	}
	if err != nil {
		return Accepted{}, err
	}
	m, err := rules.ParseManifest(b.Manifest)
	if err != nil {
		return Accepted{}, fmt.Errorf("quarantined release of %s: %w", name, err)
	}
	if !now.Before(m.Expires) {
		return Accepted{}, fmt.Errorf("feed %s: %w: the release in quarantine (serial %d) expired at %s; the release in force stays",
			name, ErrNothingToAccept, m.Serial, m.Expires.UTC().Format(time.RFC3339))
	}
	d := b.Digest()
	if err := st.WriteAccept(name, d); err != nil {
		return Accepted{}, err
	}
	return Accepted{Feed: name, Serial: m.Serial, SHA256: d, Digest: fmt.Sprintf("%x", d)}, nil
}
