// Package atomicfile writes files so that a reader, or the next start after
// a crash, finds the old content or the new content whole, never a torn
// file: the data goes to a temporary file beside the target, is synced,
// takes the target's name in one step, and the directory is synced so the
// new name survives a crash too. Create is the mode for secret keys: it
// never replaces an existing name, a symbolic link included, so a key is
// neither overwritten nor written through a planted link. The package
// imports nothing of gatehouse.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm (exactly: the umask does not
// apply). A symbolic link at path is replaced, not followed. On error the
// previous file, if any, is untouched and no temporary file is left.
func Write(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, unwrapLink(err))
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Create writes data to path, mode perm, only if nothing has that name
// yet: an existing file, directory or symbolic link (dangling or not) is
// refused with an error that satisfies errors.Is(err, fs.ErrExist). The
// check and the creation are one step (a hard link of the synced temporary
// file, which like O_CREAT|O_EXCL fails on any existing name and follows
// no link), so no other writer can slip in between, and path never holds
// half the data.
func Create(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, unwrapLink(err))
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file beside path (created
// exclusively, mode 0600 until it is complete), sets perm and syncs it.
func writeTemp(path string, data []byte, perm fs.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", unwrapPath(err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", unwrapPath(err)
	}
	return tmp, nil
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", unwrapPath(err))
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", unwrapPath(err))
	}
	return nil
}

// unwrapLink drops the temporary file's name from a rename or link error:
// the caller's message already names the target.
func unwrapLink(err error) error {
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

// unwrapPath drops a temporary file's name from an error the same way.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
