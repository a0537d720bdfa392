package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// Config says what the confined process may still touch.
type Config struct {
	// UID and GID the process switches to. Both must be non-zero: a worker
	// never runs as root. When the process already runs as exactly this
	// user (started unprivileged), no switch is made.
	UID, GID int

	// ReadOnly are files or directories the worker reads: certificates,
	// keys, CAs, CRLs, /etc/hosts and /etc/resolv.conf if it resolves
	// names. A missing path is an error: a typo must not silently leave a
	// certificate unreadable at the first reload instead of at start.
	ReadOnly []string
	// ReadWrite are files or directories the worker writes: the ticket-key
	// file's directory, the log directory.
	ReadWrite []string

	// AllowNoLandlock lets Apply go on, without file-system confinement,
	// on a kernel without Landlock (before 5.13, or with landlock missing
	// from the lsm= list). The default refuses: a worker that believes it
	// is confined and is not is worse than one that does not start.
	AllowNoLandlock bool
}

// Status says what Apply put in force, for the worker's start log line.
type Status struct {
	// LandlockABI is the kernel's Landlock ABI version, 0 when Landlock is
	// unavailable (only possible with AllowNoLandlock).
	LandlockABI int
	// SeccompSyscalls is the number of system calls the filter allows.
	SeccompSyscalls int
}

// Errors a caller may branch on.
var (
	ErrNoLandlock = errors.New("landlock is not available on this kernel (needs Linux 5.13+ with landlock in the lsm= list)")
	ErrRootTarget = errors.New("sandbox user and group must not be root (uid/gid 0)")
)

func (c Config) validate() error {
	if c.UID <= 0 || c.GID <= 0 {
		return fmt.Errorf("uid %d gid %d: %w", c.UID, c.GID, ErrRootTarget)
	}
	var errs []error
	check := func(kind string, paths []string) {
		for _, p := range paths {
			if !filepath.IsAbs(p) {
				errs = append(errs, fmt.Errorf("%s path %q: not absolute", kind, p))
				continue
			}
			if _, err := os.Stat(p); err != nil {
				errs = append(errs, fmt.Errorf("%s path: %w", kind, err))
			}
		}
	}
	check("read-only", c.ReadOnly)
	check("read-write", c.ReadWrite)
	return errors.Join(errs...)
}

// Apply confines the calling process, on every one of its threads, in this
// order: validate the configuration; set no_new_privs; drop the capability
// bounding set and the ambient set; switch to the worker's groups, group
// and user (which clears the permitted and effective sets); clear what is
// left; verify that every thread shows no capabilities at all; restrict
// the file system with Landlock; install the seccomp filter last, since it
// refuses the calls the earlier steps make.
//
// On any error the process is left partly confined and must exit: Apply
// never returns a process that looks confined and is not, but it cannot
// undo what it already dropped. Call it early, before any goroutine reads
// untrusted input.
func Apply(c Config) (Status, error) {
	if runtime.GOOS != "linux" {
		return Status{}, errors.New("sandbox: only Linux is supported")
	}
	if err := c.validate(); err != nil {
		return Status{}, fmt.Errorf("sandbox: %w", err)
	}
	abi := landlockABI()
	if abi < 1 && !c.AllowNoLandlock {
		return Status{}, fmt.Errorf("sandbox: %w; refusing to start unconfined", ErrNoLandlock)
	}
	if err := dropPrivileges(c.UID, c.GID); err != nil {
		return Status{}, fmt.Errorf("sandbox: %w", err)
	}
	if abi >= 1 {
		if err := restrictFiles(c.ReadOnly, c.ReadWrite); err != nil {
			return Status{}, fmt.Errorf("sandbox: landlock: %w", err)
		}
	}
	n, err := loadSeccomp()
	if err != nil {
		return Status{}, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	return Status{LandlockABI: abi, SeccompSyscalls: n}, nil
}
