package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// The rollback floor of a feed is the highest release ever in force: its
// serial and manifest digest, in state_dir/feeds/NAME.floor.json, a file
// of its own beside the releases. The last known good file is not enough
// for it: when that file is lost or damaged, the release it replaced
// (NAME.prev.json) is enforced, and a floor taken from the release in force
// would then let a mirror replay that older release as "unchanged". The
// floor only rises; every release is checked against it (refused as a
// rollback below it, as a serial reuse at it with another manifest), and so
// is a last known good file at start.

const floorSuffix = ".floor.json"

// Floor is the highest release of a feed that was in force.
type Floor struct {
	Serial uint64
	Digest [32]byte // of the raw manifest
}

type storedFloor struct {
	Version int    `json:"version"`
	Serial  uint64 `json:"serial"`
	Digest  string `json:"manifest_sha256"`
}

// SaveFloor records fl as the rollback floor of feed name.
func (s *Store) SaveFloor(name string, fl Floor) error {
	p, err := s.path(name, floorSuffix)
	if err != nil {
		return err
	}
	data, err := json.Marshal(storedFloor{Version: 1, Serial: fl.Serial, Digest: hex.EncodeToString(fl.Digest[:])})
	if err != nil {
		return fmt.Errorf("feed store: %w", err)
	}
	return writeAtomic(p, append(data, '\n'))
}

// LoadFloor returns the rollback floor of feed name; the error satisfies
// errors.Is(err, fs.ErrNotExist) when there is none.
func (s *Store) LoadFloor(name string) (Floor, error) {
	p, err := s.path(name, floorSuffix)
	if err != nil {
		return Floor{}, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return Floor{}, fmt.Errorf("feed store: %w", err)
	}
	var sf storedFloor
	if err := json.Unmarshal(data, &sf); err != nil {
		return Floor{}, fmt.Errorf("feed store: %s: %w", p, err)
	}
	d, err := hex.DecodeString(sf.Digest)
	if sf.Version != 1 || sf.Serial == 0 || err != nil || len(d) != sha256.Size {
		return Floor{}, fmt.Errorf("feed store: %s: not a rollback floor (version 1, a serial, a SHA-256)", p)
	}
	fl := Floor{Serial: sf.Serial}
	copy(fl.Digest[:], d)
	return fl, nil
}

// checkFloor refuses a release below the floor (rollback) or at it with
// another manifest (serial reuse); fl nil means no floor is known.
func checkFloor(fl *Floor, serial uint64, digest [32]byte, path string) error {
	switch {
	case fl == nil:
		return nil
	case serial < fl.Serial:
		return refuse(ReasonRollback, "serial %d is lower than %d, the highest release in force so far (%s)", serial, fl.Serial, path)
	case serial == fl.Serial && digest != fl.Digest:
		return refuse(ReasonSerialReuse, "serial %d was in force with a different manifest (%s)", serial, path)
	}
	return nil
}

// loadFloor reads feed f's floor at start. A missing one is initialised
// from the last known good release once that is loaded (an older state
// directory has none); a damaged one is logged at error and rebuilt the
// same way: either way the floor is then no lower than the release in
// force.
func (m *Manager) loadFloor(f *feed) {
	fl, err := m.store.LoadFloor(f.cfg.Name)
	switch {
	case err == nil:
		f.floor = &fl
	case !errors.Is(err, fs.ErrNotExist):
		m.log.Error("rollback floor unreadable; rebuilt from the last known good release", "feed", f.cfg.Name, "err", err)
	}
}

// raiseFloor records ver as the floor when it is above it. It is called
// with the release just put in force.
func (m *Manager) raiseFloor(f *feed, ver *Verified) error {
	f.mu.Lock()
	fl := f.floor
	f.mu.Unlock()
	if fl != nil && fl.Serial >= ver.Manifest.Serial {
		return nil
	}
	next := Floor{Serial: ver.Manifest.Serial, Digest: ver.Digest}
	if err := m.store.SaveFloor(f.cfg.Name, next); err != nil {
		return err
	}
	f.mu.Lock()
	f.floor = &next
	f.mu.Unlock()
	return nil
}

func (m *Manager) floorPath(name string) string {
	p, err := m.store.path(name, floorSuffix)
	if err != nil {
		return name + floorSuffix
	}
	return p
}
