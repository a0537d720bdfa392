package rules

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
)

// Store keeps verified bundles under state_dir/feeds: the last known good
// release of each feed (NAME.lkg.json), the release it replaced
// (NAME.prev.json, so that one damaged file does not lose both), the
// rollback floor (NAME.floor.json, see floor.go), a release held in
// quarantine (NAME.quarantine.json) and the admin's acceptance of it
// (NAME.accept, the hex SHA-256 of the quarantined manifest). Every write
// replaces its file atomically (write, fsync, rename, fsync the
// directory). What is read back is only a candidate: callers verify it
// again.
type Store struct {
	dir string
}

// OpenStore creates state_dir/feeds when needed.
func OpenStore(stateDir string) (*Store, error) {
	if stateDir == "" {
		return nil, errors.New("feed store: no state directory")
	}
	dir := filepath.Join(stateDir, "feeds")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("feed store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// File suffixes of a feed's releases in the store.
const (
	lkgSuffix  = ".lkg.json"
	prevSuffix = ".prev.json"
)

type storedBundle struct {
	Version    int               `json:"version"`
	Serial     uint64            `json:"serial"`
	Manifest   []byte            `json:"manifest"`
	Signatures [][]byte          `json:"signatures"`
	Files      map[string][]byte `json:"files"`
}

func (s *Store) path(name, suffix string) (string, error) {
	if !sourceRE.MatchString(name) {
		return "", fmt.Errorf("feed store: bad feed name %q", name)
	}
	return filepath.Join(s.dir, name+suffix), nil
}

// Save records b as the last known good release of feed name.
func (s *Store) Save(name string, serial uint64, b Bundle) error {
	return s.saveBundle(name, lkgSuffix, serial, b)
}

// Commit records a verified release as the last known good of feed name.
// Call it only once the daemon has applied a policy with the release.
func (s *Store) Commit(name string, v *Verified) error {
	return s.Save(name, v.Manifest.Serial, v.Bundle)
}

// SavePrevious records b as the release the last known good of feed name
// replaced.
func (s *Store) SavePrevious(name string, serial uint64, b Bundle) error {
	return s.saveBundle(name, prevSuffix, serial, b)
}

// SaveQuarantine records b as the release of feed name held in quarantine.
func (s *Store) SaveQuarantine(name string, serial uint64, b Bundle) error {
	return s.saveBundle(name, ".quarantine.json", serial, b)
}

// LoadQuarantine returns the release of feed name held in quarantine.
func (s *Store) LoadQuarantine(name string) (Bundle, error) {
	return s.loadBundle(name, ".quarantine.json")
}

// WriteAccept records the admin's acceptance of the quarantined release
// with the given manifest digest.
func (s *Store) WriteAccept(name string, digest [32]byte) error {
	p, err := s.path(name, ".accept")
	if err != nil {
		return err
	}
	return writeAtomic(p, []byte(hex.EncodeToString(digest[:])+"\n"))
}

// ReadAccept returns the accepted digest for feed name, if any.
func (s *Store) ReadAccept(name string) ([32]byte, bool, error) {
	var d [32]byte
	p, err := s.path(name, ".accept")
	if err != nil {
		return d, false, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return d, false, nil
	}
	if err != nil {
		return d, false, err
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(b) != len(d) {
		return d, false, fmt.Errorf("feed store: %s: not a SHA-256 in hex", p)
	}
	copy(d[:], b)
	return d, true, nil
}

// ClearQuarantine removes the quarantined release and its acceptance.
func (s *Store) ClearQuarantine(name string) error {
	var errs []error
	for _, suffix := range []string{".quarantine.json", ".accept"} {
		p, err := s.path(name, suffix)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Store) saveBundle(name, suffix string, serial uint64, b Bundle) error {
	p, err := s.path(name, suffix)
	if err != nil {
		return err
	}
	data, err := json.Marshal(storedBundle{Version: 1, Serial: serial, Manifest: b.Manifest, Signatures: b.Signatures, Files: b.Files})
	if err != nil {
		return fmt.Errorf("feed store: %w", err)
	}
	return writeAtomic(p, data)
}

func (s *Store) loadBundle(name, suffix string) (Bundle, error) {
	p, err := s.path(name, suffix)
	if err != nil {
		return Bundle{}, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return Bundle{}, fmt.Errorf("feed store: %w", err)
	}
	var sb storedBundle
	if err := json.Unmarshal(data, &sb); err != nil {
		return Bundle{}, fmt.Errorf("feed store: %s: %w", p, err)
	}
	if sb.Version != 1 {
		return Bundle{}, fmt.Errorf("feed store: %s: unknown version %d", p, sb.Version)
	}
	return Bundle{Manifest: sb.Manifest, Signatures: sb.Signatures, Files: sb.Files}, nil
}

// writeAtomic writes a store file (mode 0600).
func writeAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) }
