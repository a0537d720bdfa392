package sandbox

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The tests run the sandbox in a child: the test binary started again with
// childEnv set, which applies the confinement that names, tries each probe,
// prints the results as one JSON line, then waits for its standard input
// to close so that the parent can read its /proc status while it lives.
const (
	childEnv = "GATEHOUSE_SANDBOX_CHILD" // full | seccomp | none
	dirEnv   = "GATEHOUSE_SANDBOX_DIR"   // the fixture directory (see newFixture)
	// The worker's user in the tests: nobody.
	testUID, testGID = 65534, 65534
)

// childMain runs in the child and never returns.
func childMain(mode string) {
	dir := os.Getenv(dirEnv)
	var err error
	switch mode {
	case "full":
		_, err = Apply(Config{
			UID: testUID, GID: testGID,
			ReadOnly:  []string{filepath.Join(dir, "ro")},
			ReadWrite: []string{filepath.Join(dir, "rw")},
		})
	case "seccomp":
		_, err = loadSeccomp()
	case "none":
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "apply:", err)
		os.Exit(3)
	}
	out, _ := json.Marshal(runProbes(dir))
	fmt.Println(string(out))
	io.Copy(io.Discard, os.Stdin) // stay alive until the parent has looked
	os.Exit(0)
}

// result names the errno a probe failed with, "ok", or another error.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if os.Getenv("GATEHOUSE_SANDBOX_DEBUG") != "" {
			fmt.Fprintln(os.Stderr, err)
		}
		return unix.ErrnoName(errno)
	}
	return "error: " + err.Error()
}

func runProbes(dir string) map[string]string {
	r := map[string]string{}
	r["open /etc/shadow"] = result(openClose("/etc/shadow"))
	r["read /etc/passwd"] = result(openClose("/etc/passwd"))
	r["write outside"] = result(os.WriteFile(filepath.Join(dir, "outside", "x"), []byte("x"), 0o600))
	r["write read-only dir"] = result(os.WriteFile(filepath.Join(dir, "ro", "x"), []byte("x"), 0o600))
	r["write read-write dir"] = result(writeRename(filepath.Join(dir, "rw")))
	r["exec /bin/sh"] = result(execShell())
	r["bpf map"] = result(bpfMap())
	r["bpf syscall"] = result(bpfSyscall())
	r["netlink netfilter socket"] = result(socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, nil))
	r["raw socket bind"] = result(socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	r["packet socket"] = result(socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)), nil))
	r["unshare"] = result(unshareUTS())
	r["setuid 0"] = result(syscall.Setuid(0))
	r["kill 1"] = result(unix.Kill(1, 0))
	r["tls listener"] = result(tlsRoundTrip(filepath.Join(dir, "ro")))
	return r
}

func openClose(path string) error {
	f, err := os.Open(path)
	if err == nil {
		f.Close()
	}
	return err
}

// writeRename writes a file the way atomicfile does: temporary, rename.
func writeRename(dir string) error {
	tmp := filepath.Join(dir, ".tickets.tmp")
	if err := os.WriteFile(tmp, []byte("k"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "tickets"))
}

func bpfMap() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err == nil {
		m.Close()
	}
	return err
}

// execShell starts /bin/sh directly (fork and execve), without os/exec's
// look-ups and /dev/null, so that the execve itself is what is refused.
func execShell() error {
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "true"}, &os.ProcAttr{})
	if err != nil {
		return err
	}
	st, err := p.Wait()
	if err == nil && !st.Success() {
		err = fmt.Errorf("sh: %v", st)
	}
	return err
}

// bpfSyscall creates an array map with bpf(2) directly: cilium/ebpf reads
// /proc/self/mountinfo first (BPF tokens), which Landlock already refuses.
func bpfSyscall() error {
	attr := struct{ typ, keySize, valueSize, maxEntries uint32 }{typ: unix.BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 4, maxEntries: 1}
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if e != 0 {
		return e
	}
	return unix.Close(int(fd))
}

func socket(family, typ, proto int, bind unix.Sockaddr) error {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if bind != nil {
		return unix.Bind(fd, bind)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// unshareUTS tries a new UTS namespace on a thread that is thrown away
// afterwards (the goroutine ends locked to it).
func unshareUTS() error {
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		done <- unix.Unshare(unix.CLONE_NEWUTS)
	}()
	return <-done
}

// tlsRoundTrip is the allowed path: a TCP listener, a certificate and key
// read from the read-only directory, a full handshake and one byte each way.
func tlsRoundTrip(ro string) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(ro, "cert.pem"), filepath.Join(ro, "key.pem"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return err
	}
	defer ln.Close()
	srv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			srv <- err
			return
		}
		_, err = c.Write(b)
		srv <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "worker.example.net"})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{42}); err != nil {
		return err
	}
	b, err := bufio.NewReader(c).ReadByte()
	if err != nil {
		return err
	}
	if b != 42 {
		return fmt.Errorf("echo: got %d", b)
	}
	return <-srv
}
