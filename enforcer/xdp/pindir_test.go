package xdp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

func TestBPFMounts(t *testing.T) {
	info := `21 26 0:20 / /proc rw,relatime - proc proc rw
35 24 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
36 24 0:45 / /tmp/with\040space rw,relatime - bpf bpf rw
37 24 0:45 / /run/again rw,relatime master:7 - bpf bpf rw
38 24 0:46 / /tmp/other rw,relatime - tmpfs tmpfs rw
`
	path := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(path, []byte(info), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := bpfMounts(path, "0:45")
	if err != nil {
		t.Fatal(err)
	}
	want := []bpfMount{{point: "/tmp/with space"}, {point: "/run/again", propagated: true}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("bpfMounts(0:45) = %+v, want %+v", got, want)
	}
	if got, _ := bpfMounts(path, "0:31"); len(got) != 1 || !got[0].propagated || got[0].point != "/sys/fs/bpf" {
		t.Errorf("bpfMounts(0:31) = %+v", got)
	}
	if got, _ := bpfMounts(path, "0:46"); len(got) != 0 {
		t.Errorf("a tmpfs counted as bpffs: %+v", got)
	}
}

// TestCheckPinDirNotBPFFS: a pin directory that is not on a bpffs, nor its
// parent when it does not exist yet, is refused as the daemon would.
func TestCheckPinDirNotBPFFS(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Join(dir, "gatehouse")} {
		if _, _, err := CheckPinDir(d); !errors.Is(err, ErrNotBPFFS) {
			t.Errorf("CheckPinDir(%s) = %v, want ErrNotBPFFS", d, err)
		}
	}
}

// TestCheckPinDirInPIDNamespace: inside a PID namespace of its own (a
// container; here unshare -m -p -f --mount-proc with a bpffs mounted in
// the new mount namespace only), PID 1 is that namespace's init, whose
// mounts are the process's own: a bpffs found there is not known to be
// the host's. CheckPinDir must not call it shared.
func TestCheckPinDirInPIDNamespace(t *testing.T) {
	if dir := os.Getenv("GATEHOUSE_PINDIR_PROBE"); dir != "" {
		scope, detail, err := CheckPinDir(dir)
		fmt.Printf("scope=%d err=%v detail=%s\n", scope, err, detail)
		return
	}
	netns.RequirePriv(t)
	unshare := netns.RequireTool(t, "unshare", "util-linux")
	dir := t.TempDir()
	cmd := exec.Command(unshare, "-m", "-p", "-f", "--mount-proc", "sh", "-c",
		`mount -t bpf bpf "$0" && exec "$1" -test.run='^TestCheckPinDirInPIDNamespace$'`, dir, os.Args[0])
	cmd.Env = append(os.Environ(), "GATEHOUSE_PINDIR_PROBE="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe under unshare: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("scope=%d ", PinUnknown)) || !strings.Contains(string(out), "not the host's init") {
		t.Errorf("a bpffs of a container-like PID and mount namespace: %s, want unknown (PID 1 is not the host's init)", out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the probe's bpffs leaked into the host's mount namespace: %v", entries)
	}
}
