package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// noTemp fails when a temporary file is left in dir.
func noTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func perm(t *testing.T, path string) fs.FileMode {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() {
		t.Fatalf("%s is %v, want a regular file", path, st.Mode())
	}
	return st.Mode().Perm()
}

// A reader polling the target while it is replaced again and again sees
// one whole version each time, never a short or mixed file.
func TestWriteNeverTorn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	versions := [][]byte{bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 128<<10)}
	if err := Write(path, versions[0], 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var reads, torn int
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("read during replacement: %v", err)
				return
			}
			reads++
			if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
				torn++
			}
		}
	}()
	for i := range 100 {
		if err := Write(path, versions[(i+1)%2], 0o600); err != nil {
			t.Error(err)
			break
		}
	}
	close(done)
	wg.Wait()
	if torn > 0 {
		t.Errorf("%d of %d reads saw a torn file", torn, reads)
	}
	noTemp(t, filepath.Dir(path))
}

func TestWriteModeAndLink(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)

	path := filepath.Join(dir, "manifest.json")
	if err := Write(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, path); p != 0o644 {
		t.Errorf("mode %v, want 0644 whatever the umask", p)
	}
	// Replacing narrows the mode too: a file made 0644 by hand does not
	// keep a secret readable.
	if err := Write(path, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, path); p != 0o600 {
		t.Errorf("mode after replacement %v, want 0600", p)
	}

	// A symbolic link at the target is replaced, its target left alone.
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "ticket.keys")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := Write(link, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "keep" {
		t.Errorf("written through a symbolic link: victim holds %q", got)
	}
	if got, _ := os.ReadFile(link); string(got) != "new" || perm(t, link) != 0o600 {
		t.Errorf("target %q mode %v", got, perm(t, link))
	}
	noTemp(t, dir)
}

func TestWriteFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	// A directory at the target cannot be replaced by a file.
	target := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := Write(target, []byte("data"), 0o600)
	if err == nil {
		t.Fatal("replaced a directory")
	}
	if !strings.HasPrefix(err.Error(), "write "+target+": ") || strings.Contains(err.Error(), ".tmp-") {
		t.Errorf("error %q: want the target named once and no temporary name", err)
	}
	if _, err := os.Stat(filepath.Join(target, "x")); err != nil {
		t.Errorf("directory damaged: %v", err)
	}
	noTemp(t, dir)

	missing := filepath.Join(dir, "nodir", "file")
	if err := Write(missing, []byte("data"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("write into a missing directory: %v, want not exist", err)
	}
}

func TestCreateExclusive(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	key := filepath.Join(dir, "feed.key")
	if err := Create(key, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, key); p != 0o600 {
		t.Errorf("mode %v, want 0600", p)
	}

	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling.key")
	if err := os.Symlink(filepath.Join(dir, "planted"), dangling); err != nil {
		t.Fatal(err)
	}
	pointing := filepath.Join(dir, "pointing.key")
	if err := os.Symlink(victim, pointing); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"existing file", key},
		{"dangling symbolic link", dangling},
		{"symbolic link to a file", pointing},
		{"directory", dir},
	} {
		err := Create(tc.path, []byte("other"), 0o600)
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("%s: %v, want refused as existing", tc.name, err)
			continue
		}
		if want := "create " + tc.path + ": file exists"; err.Error() != want {
			t.Errorf("%s: error %q, want %q", tc.name, err, want)
		}
	}
	if got, _ := os.ReadFile(key); string(got) != "secret" {
		t.Errorf("existing key overwritten: %q", got)
	}
	if got, _ := os.ReadFile(victim); string(got) != "keep" {
		t.Errorf("written through a symbolic link: %q", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "planted")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("created the target of a dangling symbolic link: %v", err)
	}
	noTemp(t, dir)
}

// traceEnv makes the test binary a helper that writes one file and exits,
// for strace to watch.
const traceEnv = "ATOMICFILE_TRACE_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(traceEnv); spec != "" {
		mode, path, _ := strings.Cut(spec, ":")
		var err error
		if mode == "create" {
			err = Create(path, []byte("data"), 0o600)
		} else {
			err = Write(path, []byte("data"), 0o600)
		}
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The system calls, in order: the temporary file is synced before it takes
// the target's name, and the directory is synced after.
func TestDirectorySynced(t *testing.T) {
	strace := netns.RequireTool(t, "strace", "strace")
	for _, mode := range []string{"write", "create"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state")
			trace := filepath.Join(t.TempDir(), "trace")
			cmd := exec.Command(strace, "-f", "-qq", "-y", "-o", trace,
				"-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat",
				os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), traceEnv+"="+mode+":"+path)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("helper under strace: %v\n%s", err, out)
			}
			data, err := os.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			var tmpSync, place, dirSync = -1, -1, -1
			tmpRE := regexp.MustCompile(`fsync\(\d+<` + regexp.QuoteMeta(dir) + `/\.state\.tmp-`)
			placeRE := regexp.MustCompile(`(rename|link)\w*\(.*"` + regexp.QuoteMeta(path) + `"`)
			dirRE := regexp.MustCompile(`fsync\(\d+<` + regexp.QuoteMeta(dir) + `>`)
			for i, line := range strings.Split(string(data), "\n") {
				switch {
				case tmpRE.MatchString(line):
					tmpSync = i
				case placeRE.MatchString(line):
					place = i
				case dirRE.MatchString(line):
					dirSync = i
				}
			}
			if !(tmpSync >= 0 && tmpSync < place && place < dirSync) {
				t.Errorf("want fsync(temporary) < rename/link < fsync(directory), lines %d %d %d:\n%s", tmpSync, place, dirSync, data)
			}
		})
	}
}
