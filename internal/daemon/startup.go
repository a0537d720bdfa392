package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// stateSubdirs are the directories the daemon keeps under state_dir: the
// feed store (rules.OpenStore) and the session-ticket keys (certs).
var stateSubdirs = []string{"feeds", "tls-tickets"}

// CheckStateDir refuses a state_dir the daemon could not keep its state in:
// a file, a path through a file, or (checked as root, as the daemon runs) a
// directory it cannot write, or one it could not create; and the same of
// each directory it keeps there (stateSubdirs). `run` and `check` both call
// it, so check refuses what run would.
func CheckStateDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return fmt.Errorf("state_dir %s: not a directory", dir)
	case err == nil:
		if err := writable(dir); err != nil {
			return fmt.Errorf("state_dir %w", err)
		}
		var errs []error
		for _, sub := range stateSubdirs {
			p := filepath.Join(dir, sub)
			fi, err := os.Stat(p)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				// Created by the daemon, in the writable state_dir.
			case err != nil:
				errs = append(errs, fmt.Errorf("state_dir %s: %w", p, unwrapPath(err)))
			case !fi.IsDir():
				errs = append(errs, fmt.Errorf("state_dir %s: not a directory (the daemon keeps %s there)", p, sub))
			default:
				if err := writable(p); err != nil {
					errs = append(errs, fmt.Errorf("state_dir %w", err))
				}
			}
		}
		return errors.Join(errs...)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("state_dir %s: %w", dir, unwrapPath(err))
	}
	// Missing: the daemon creates it, so its nearest existing parent must
	// be a directory it can write.
	parent := filepath.Dir(dir)
	for {
		fi, err := os.Stat(parent)
		switch {
		case err == nil && !fi.IsDir():
			return fmt.Errorf("state_dir %s: cannot be created: %s is not a directory", dir, parent)
		case err == nil:
			if err := writable(parent); err != nil {
				return fmt.Errorf("state_dir %s: cannot be created: %w", dir, err)
			}
			return nil
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("state_dir %s: %w", dir, unwrapPath(err))
		}
		parent = filepath.Dir(parent)
	}
}

// writable checks write access as root only: the daemon runs as root, and
// for anyone else (an admin running check) the answer would be about them.
func writable(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("%s: not writable: %w", dir, err)
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// CheckPinDir applies the pin directory rule: the pinned XDP filter must
// outlive the daemon, so a pin directory whose bpffs is private to the
// daemon's mount namespace (the daemon started under `ip netns exec` or
// `unshare -m`, with its pins on a bpffs mounted there) is refused unless
// allowPrivate; allowed, it is a warning. When it cannot be told, that is a
// warning too. A pin directory not on a bpffs is an error. XDP off: nothing
// to check.
func CheckPinDir(cfg *config.Config, allowPrivate bool) (warning string, err error) {
	if policy.XDPMode(cfg.Enforcement.XDP) == policy.XDPOff {
		return "", nil
	}
	dir := cfg.Enforcement.PinDir
	scope, detail, err := xdp.CheckPinDir(dir)
	if err != nil {
		return "", fmt.Errorf("enforcement.pin_dir: %w", err)
	}
	switch scope {
	case xdp.PinPrivate:
		if !allowPrivate {
			return "", fmt.Errorf("enforcement.pin_dir %s: %s; the XDP filter would be detached when the daemon exits. "+
				"Pin on a bpffs of the host's mount namespace (mount -t bpf bpf /sys/fs/bpf there), or accept a filter that "+
				"lasts only as long as the process with --allow-private-bpffs", dir, detail)
		}
		return fmt.Sprintf("the XDP filter will not outlive the daemon (--allow-private-bpffs): %s", detail), nil
	case xdp.PinUnknown:
		return fmt.Sprintf("cannot tell whether the XDP filter outlives the daemon: %s", detail), nil
	}
	return "", nil
}
