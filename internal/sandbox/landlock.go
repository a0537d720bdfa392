package sandbox

import (
	"fmt"
	"os"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// Access rights granted below the configured paths. Execute is in none of
// them: nothing the worker can reach may be run. Everything the ruleset
// handles and no rule grants (execute, device ioctl, making devices,
// sockets, fifos, symlinks and directories, linking across directories) is
// refused everywhere.
const (
	readFile  = ll.AccessFSReadFile
	readDir   = ll.AccessFSReadFile | ll.AccessFSReadDir
	writeFile = ll.AccessFSReadFile | ll.AccessFSWriteFile | ll.AccessFSTruncate
	// A directory the worker writes into: create, replace by rename within
	// the directory (temporary file + rename needs remove and make), and
	// delete its own files.
	writeDir = readDir | ll.AccessFSWriteFile | ll.AccessFSTruncate |
		ll.AccessFSMakeReg | ll.AccessFSRemoveFile
)

// landlockABI returns the kernel's Landlock ABI version, 0 without Landlock.
func landlockABI() int {
	v, err := ll.LandlockGetABIVersion()
	if err != nil {
		return 0
	}
	return v
}

// restrictFiles puts the file-system ruleset in force on every thread, and
// a second ruleset that scopes signals and abstract unix sockets to the
// worker's own domain (Linux 6.12+; skipped on older kernels, where
// seccomp still refuses kill).
//
// The configuration handles the rights of ABI 5 (Linux 6.10) with best
// effort: an older kernel enforces the subset it knows, which from ABI 1 on
// includes the three promises (read-only, write only here, no exec).
func restrictFiles(readOnly, readWrite []string) error {
	var rules []landlock.Rule
	add := func(paths []string, fileRights, dirRights landlock.AccessFSSet) error {
		for _, p := range paths {
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			rights := fileRights
			if fi.IsDir() {
				rights = dirRights
			}
			rules = append(rules, landlock.PathAccess(rights, p))
		}
		return nil
	}
	if err := add(readOnly, readFile, readDir); err != nil {
		return err
	}
	if err := add(readWrite, writeFile, writeDir); err != nil {
		return err
	}
	if err := landlock.V5.BestEffort().RestrictPaths(rules...); err != nil {
		return fmt.Errorf("restrict paths: %w", err)
	}
	if err := landlock.V6.BestEffort().RestrictScoped(); err != nil {
		return fmt.Errorf("restrict scopes: %w", err)
	}
	return nil
}
