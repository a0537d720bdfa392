package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Addresses of the demo (documentation ranges only). The outside wire is
// 192.0.2.0/24 and 2001:db8:1::/64; the feed publishes 192.0.2.0/26 and
// 2001:db8:1::/112 as the cloud's ranges, so the cloud is admitted and the
// intruder, on the same wire, is not.
const (
	gateName   = "gate.demo.example" // the server certificate's DNS name
	gateV4     = "192.0.2.1"
	gateV6     = "2001:db8:1::1"
	cloudV4    = "192.0.2.10"
	cloudV6    = "2001:db8:1::10"
	intruderV4 = "192.0.2.200"
	intruderV6 = "2001:db8:1::dead:beef"
	feedV4     = "192.0.2.0/26"
	feedV6     = "2001:db8:1::/112"

	insideV4    = "203.0.113.1"
	httpsAddr   = "203.0.113.10:8443" // the tenant's HTTPS backend
	soapAddr    = "203.0.113.20:8080" // the tenant's SOAP service (plain HTTP inside)
	tn3270Addr  = "203.0.113.30:23"   // the tenant's TN3270 host (plain Telnet inside)
	metricsAddr = "127.0.0.1:9477"    // the daemon's metrics endpoint, inside the dmz
	adminAddr   = "127.0.0.1:9443"    // its HTTPS admin endpoint, inside the dmz

	outsideIf = "outside" // the dmz's outside veth: XDP attaches here
	tenant    = "acme"
	tenantURI = "spiffe://acme/cloud"
	feedName  = "democloud"
)

// roles of the namespaces, in creation order. "wan" holds only a bridge
// joining cloud, intruder and the dmz's outside interface, so the cloud and
// the intruder are separate hosts on one wire.
var roles = []string{"wan", "cloud", "intruder", "dmz", "internal"}

// demo is one run: what it created (to remove it again) and how the steps
// went.
type demo struct {
	out       io.Writer
	check     bool
	connector bool // --connector: the site with no inbound port

	id       string
	ns       map[string]string // role → namespace name
	dir      string            // temporary directory: PKI, feed, config, state, logs, bpffs
	bin      string            // gatehouse binary
	config   string
	bpffs    string // bpffs mount point; the daemon pins under bpffs/gatehouse
	daemon   *exec.Cmd
	daemonCh chan struct{} // closed when the daemon exited
	log      string        // daemon log file

	connConfig, connLog string // --connector: the connector's configuration and log

	ha       bool      // --ha: three nodes behind a BGP ECMP router
	haNodes  []*haNode // --ha: the nodes, n1..n3
	birdSock string    // --ha: BIRD's control socket

	cleanups []func() // run in reverse order by cleanup
	// cleanupMu guards cleanups while nodes start in parallel (--ha).
	cleanupMu sync.Mutex

	passed, failedN int
	failed          bool
}

// Progress lines. Every line of a step starts with one of these marks; the
// test for the demo reads them.
const (
	markOK   = "✔"
	markFail = "✘"
)

func (d *demo) ok(format string, a ...any) {
	d.passed++
	fmt.Fprintf(d.out, "  %s %s\n", markOK, fmt.Sprintf(format, a...))
}

func (d *demo) fail(what string, err error) {
	d.failedN++
	d.failed = true
	fmt.Fprintf(d.out, "  %s %s: %v\n", markFail, what, err)
}

func (d *demo) section(title string) { fmt.Fprintf(d.out, "\n%s\n", title) }

// onCleanup registers fn to run at exit, after everything registered later.
func (d *demo) onCleanup(fn func()) {
	d.cleanupMu.Lock()
	defer d.cleanupMu.Unlock()
	d.cleanups = append(d.cleanups, fn)
}

// cleanup undoes everything in reverse order. Each undo stands alone: one
// that fails does not stop the others.
func (d *demo) cleanup() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

// summary prints the tally and returns the exit code.
func (d *demo) summary() int {
	fmt.Fprintf(d.out, "\n%d step(s) passed, %d failed\n", d.passed, d.failedN)
	if d.failed {
		return 1
	}
	return 0
}

// cmd runs name with args (inside namespace role unless role is "") and
// returns its combined output; a non-zero exit is an error carrying the
// output.
func (d *demo) cmd(ctx context.Context, role, name string, args ...string) (string, error) {
	c := d.command(ctx, role, name, args...)
	var b bytes.Buffer
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	if err != nil {
		return b.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(b.String()))
	}
	return b.String(), nil
}

// command prepares name with args inside namespace role ("" for here) in its
// own process group, so the terminal's Ctrl-C reaches only the demo, which
// then stops its children in order.
func (d *demo) command(ctx context.Context, role, name string, args ...string) *exec.Cmd {
	if role != "" {
		args = append([]string{"netns", "exec", d.ns[role], name}, args...)
		name = "ip"
	}
	c := exec.CommandContext(ctx, name, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.WaitDelay = 2 * time.Second
	return c
}

// prepareWorkDir makes the demo's work directory (removed at cleanup) and
// finds the gatehouse binary to run; every mode starts with it.
func (d *demo) prepareWorkDir(ctx context.Context, bin string) error {
	dir, err := os.MkdirTemp("", "gatehouse-demo-")
	if err != nil {
		return err
	}
	d.dir = dir
	d.onCleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(d.out, "cleanup: remove %s: %v\n", dir, err)
		}
	})
	if d.bin, err = findGatehouse(ctx, bin, dir); err != nil {
		return err
	}
	d.ok("gatehouse binary %s, work directory %s", d.bin, dir)
	return nil
}

// setup builds the topology, the PKI, the signed feed and the
// configuration, starts the internal hosts and the daemon, and waits until
// the daemon says it is ready. Each part prints one progress line.
func (d *demo) setup(ctx context.Context, bin string) error {
	fmt.Fprintln(d.out, "gatehouse demo: setting up")
	if err := d.prepareWorkDir(ctx, bin); err != nil {
		return err
	}

	if err := d.buildTopology(ctx); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	d.ok("namespaces %s-{%s}: cloud %s, intruder %s, dmz %s (outside) / %s (inside), internal 203.0.113.0/24",
		"ghdemo-"+d.id, strings.Join(roles, ","), cloudV4, intruderV4, gateV4, insideV4)

	if err := d.makePKI(ctx); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	d.ok("gatehouse certs: demo CA, server certificate %s, tenant %s client certificate (%s), internal CA", gateName, tenant, tenantURI)

	pub, err := d.signFeed(ctx)
	if err != nil {
		return fmt.Errorf("feed: %w", err)
	}
	d.ok("gatehouse feed: key pair and signed release of %q (cidr: %s, %s)", feedName, feedV4, feedV6)

	if err := d.mountBPFFS(ctx); err != nil {
		return err
	}
	d.ok("bpffs mounted at %s (the daemon's enforcement.pin_dir lives there)", d.bpffs)

	if err := d.startBackends(ctx); err != nil {
		return fmt.Errorf("internal hosts: %w", err)
	}
	d.ok("internal hosts: HTTPS %s, SOAP %s, TN3270 %s", httpsAddr, soapAddr, tn3270Addr)

	if err := d.writeConfig(pub); err != nil {
		return err
	}
	if out, err := d.cmd(ctx, "", d.bin, "check", "-c", d.config); err != nil {
		return fmt.Errorf("gatehouse check: %w\n%s", err, out)
	}
	d.ok("gatehouse check: configuration %s is valid", d.config)

	if err := d.startDaemon(ctx); err != nil {
		return fmt.Errorf("gatehouse run: %w", err)
	}
	d.ok("gatehouse run in %s: ready (pid %d, log %s)", d.ns["dmz"], d.daemon.Process.Pid, d.log)

	// Ready means the first policy is in force; the feed may land in a
	// later generation. Wait until the kernel holds the feed's range.
	var set string
	if !waitUntil(ctx, 20*time.Second, func() bool {
		set, _ = d.cmd(ctx, "dmz", "nft", "list", "set", "inet", "gatehouse", "admitted_v4")
		return strings.Contains(set, feedV4)
	}) {
		return fmt.Errorf("feed %q not applied after 20s: admitted_v4 is\n%s", feedName, set)
	}
	d.ok("feed %q verified and applied: %s admitted by XDP and nftables, nothing else", feedName, feedV4)
	return nil
}

// makePKI issues the demo's certificates with `gatehouse certs`: the
// gatehouse CA and the server certificate clients verify, the tenant's own
// CA and its client certificate (the tenant is what the certificate says),
// and an internal CA for the HTTPS backend gatehouse re-encrypts to.
func (d *demo) makePKI(ctx context.Context) error {
	p := d.path("pki")
	steps := [][]string{
		{"certs", "init-ca", "--dir", p + "/gatehouse-ca", "--cn", "gatehouse demo CA"},
		{"certs", "issue", "--ca", p + "/gatehouse-ca", "--server", "--dns", gateName, "--ip", gateV4, "--ip", gateV6, "--out", p + "/server"},
		{"certs", "init-ca", "--dir", p + "/acme-ca", "--cn", "acme tenant CA"},
		{"certs", "issue", "--ca", p + "/acme-ca", "--client", "--tenant", tenant, "--uri", tenantURI, "--out", p + "/acme-cloud"},
		{"certs", "init-ca", "--dir", p + "/internal-ca", "--cn", "internal demo CA"},
		{"certs", "issue", "--ca", p + "/internal-ca", "--server", "--dns", "orders.internal.example", "--ip", strings.Split(httpsAddr, ":")[0], "--out", p + "/backend"},
		// The admin endpoint's certificate, and the admins' own CA with a
		// global admin and a viewer of tenant acme.
		{"certs", "issue", "--ca", p + "/gatehouse-ca", "--server", "--dns", "localhost", "--ip", "127.0.0.1", "--out", p + "/admin-server"},
		{"certs", "init-ca", "--dir", p + "/admin-ca", "--cn", "demo admins CA"},
		{"certs", "issue", "--ca", p + "/admin-ca", "--client", "--cn", "ops-admin", "--out", p + "/ops-admin"},
		{"certs", "issue", "--ca", p + "/admin-ca", "--client", "--cn", "acme-viewer", "--out", p + "/acme-viewer"},
	}
	for _, args := range steps {
		if _, err := d.cmd(ctx, "", d.bin, args...); err != nil {
			return err
		}
	}
	return nil
}

// signFeed publishes the cloud's ranges as a signed cidr feed release in
// DIR/feed and returns the public key line for minisign_keys.
func (d *demo) signFeed(ctx context.Context) (string, error) {
	feedDir := d.path("feed")
	if err := os.MkdirAll(feedDir, 0o755); err != nil {
		return "", err
	}
	ranges := fmt.Sprintf("# ranges the demo cloud provider publishes\n%s\n%s\n", feedV4, feedV6)
	if err := os.WriteFile(filepath.Join(feedDir, "cloud-ranges.txt"), []byte(ranges), 0o644); err != nil {
		return "", err
	}
	key := d.path("feed-signing")
	if _, err := d.cmd(ctx, "", d.bin, "feed", "keygen", "--out", key, "--unencrypted"); err != nil {
		return "", err
	}
	if _, err := d.cmd(ctx, "", d.bin, "feed", "sign", "--dir", feedDir, "--key", key+".key",
		"--source", feedName, "--format", "cidr", "cloud-ranges.txt"); err != nil {
		return "", err
	}
	raw, err := os.ReadFile(key + ".pub")
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	pub := strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(pub, "RW") {
		return "", fmt.Errorf("unexpected public key file %s", key+".pub")
	}
	return pub, nil
}

// mountBPFFS gives the daemon a private bpffs for its pins, so the demo
// never touches /sys/fs/bpf/gatehouse.
func (d *demo) mountBPFFS(ctx context.Context) error {
	d.bpffs = d.path("bpffs")
	if err := os.MkdirAll(d.bpffs, 0o700); err != nil {
		return err
	}
	if _, err := d.cmd(ctx, "", "mount", "-t", "bpf", "bpf", d.bpffs); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	mnt := d.bpffs
	d.onCleanup(func() {
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			fmt.Fprintf(d.out, "cleanup: umount %s: %v %s\n", mnt, err, out)
		}
	})
	return nil
}

// stopProcess sends SIGTERM to c's process (by PID), then SIGKILL after
// grace, and waits for it.
func stopProcess(c *exec.Cmd, exited <-chan struct{}, grace time.Duration) {
	if c.Process == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = c.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = c.Process.Kill()
		<-exited
	}
}

// writeConfig writes the daemon's configuration: XDP on the outside veth
// pinned in the private bpffs, the nftables table, the signed file:// feed as
// the only source of admitted ranges (static_ranges empty), one tenant and
// its listeners.
func (d *demo) writeConfig(pub string) error {
	p := d.path("pki")
	mainframe := fmt.Sprintf(`  - name: mainframe
    listen: ":992"
    protocol: %[4]s
    server_cert: %[1]s/server.pem
    server_key: %[1]s/server.key
    routes:
      - {tenant: %[2]s, backend: "%[3]s"}
`, p, tenant, tn3270Addr, "tn3270")
	cfg := fmt.Sprintf(`# gatehouse demo configuration (written by test/demo)
interface: %[1]s
state_dir: %[2]s/state
admin_socket: %[2]s/admin.sock
shutdown_grace: 2s
enforcement:
  xdp: auto
  pin_dir: %[3]s/gatehouse
  nftables: true
  mode: listeners
  scan_block: {distinct_ports: 10, window: 10s, block_for: 10m}
metrics: {listen: "%[4]s"}
feeds:
  - name: %[5]s
    source: "file://%[2]s/feed/manifest.json"
    format: cidr
    minisign_keys: ["%[6]s"]
    threshold: 1
    refresh: 1m
static_ranges: []
tenants:
  - id: %[7]s
    client_ca: %[8]s/acme-ca/ca.pem
    identities: {uri_san: ["%[9]s"]}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[8]s/server.pem
    server_key: %[8]s/server.key
    routes:
      - {tenant: %[7]s, backend: "https://%[10]s", backend_ca: %[8]s/internal-ca/ca.pem}
  - name: services
    listen: ":8443"
    protocol: soap
    server_cert: %[8]s/server.pem
    server_key: %[8]s/server.key
    routes:
      - {tenant: %[7]s, backend: "http://%[11]s", soap_actions: ["urn:acme:GetOrder"]}
%[12]saccess:
  https: {listen: "%[13]s", server_cert: %[8]s/admin-server.pem, server_key: %[8]s/admin-server.key}
  grants:
    - {role: admin, scope: global, certificates: [{client_ca: %[8]s/admin-ca/ca.pem, crl: none, identities: {cn: [ops-admin]}}]}
    - {role: viewer, scope: "tenant:%[7]s", certificates: [{client_ca: %[8]s/admin-ca/ca.pem, crl: none, identities: {cn: [acme-viewer]}}]}
rules:
  # The demo runs on documentation addresses, which the bogon guard refuses
  # in feeds unless exempted here. Empty in production.
  reserved_exempt: [192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, "2001:db8::/32"]
`, outsideIf, d.dir, d.bpffs, metricsAddr, feedName, pub, tenant, p, tenantURI, httpsAddr, soapAddr, mainframe, adminAddr)
	d.config = d.path("gatehouse.yaml")
	return os.WriteFile(d.config, []byte(cfg), 0o600)
}

// startDaemon runs `gatehouse run` in the daemon's namespace (the dmz; the
// gateway's with --connector), logging to a file, and waits until /readyz
// answers 200 (the first policy is in force). Stopping it (SIGTERM by PID,
// then SIGKILL) and `gatehouse teardown` are registered for cleanup.
func (d *demo) startDaemon(ctx context.Context) error {
	d.log = d.path("gatehouse.log")
	if d.daemon == nil {
		// Teardown once, whatever number of starts: it runs after the stop
		// registered by startGatehouse (cleanups run in reverse).
		d.onCleanup(d.teardown)
	}
	c, exited, err := d.startGatehouse(ctx, d.role(), d.config, d.log, metricsAddr)
	if c != nil {
		d.daemon, d.daemonCh = c, exited
	}
	return err
}

// startGatehouse runs `gatehouse run -c config` in role's namespace with its
// output in logPath, registers its stop (SIGTERM by PID, then SIGKILL) for
// cleanup and waits until /readyz on metrics answers 200 there. The command
// is returned once started, even when it then fails to get ready.
func (d *demo) startGatehouse(ctx context.Context, role, config, logPath, metrics string) (*exec.Cmd, chan struct{}, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	c := d.command(context.Background(), role, d.bin, "run", "-c", config)
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		logf.Close()
		return nil, nil, err
	}
	exited := make(chan struct{})
	go func() { _ = c.Wait(); logf.Close(); close(exited) }()
	d.onCleanup(func() { stopProcess(c, exited, 10*time.Second) })

	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return c, exited, fmt.Errorf("daemon exited before it was ready (%v); log %s", c.ProcessState, logPath)
		case <-ctx.Done():
			return c, exited, ctx.Err()
		default:
		}
		out, _ := d.cmd(ctx, role, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", "http://"+metrics+"/readyz")
		if strings.TrimSpace(out) == "200" {
			return c, exited, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c, exited, fmt.Errorf("daemon not ready after 30s; log %s", logPath)
}

// role is the namespace role of the daemon with the kernel filters: the
// dmz, or the gateway's with --connector.
func (d *demo) role() string {
	if d.connector {
		return "gw"
	}
	return "dmz"
}

// teardown lifts the daemon's kernel filters: the XDP program pinned in the
// private bpffs and table inet gatehouse in the dmz namespace.
func (d *demo) teardown() {
	out, err := exec.Command("ip", "netns", "exec", d.ns[d.role()], d.bin, "teardown", "--yes", "--pin-dir", filepath.Join(d.bpffs, "gatehouse"), "-c", d.config).CombinedOutput()
	if err != nil {
		fmt.Fprintf(d.out, "cleanup: gatehouse teardown: %v\n%s", err, out)
	}
}

// showDaemonLog prints the end of the daemon's log (and the connector's,
// with --connector) after a failure.
func (d *demo) showDaemonLog() {
	for _, log := range []string{d.log, d.connLog} {
		if log == "" {
			continue
		}
		b, _ := os.ReadFile(log)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(d.out, "\nlast lines of the log %s:\n", log)
		for _, l := range lines {
			fmt.Fprintln(d.out, "  | "+l)
		}
	}
}

func (d *demo) path(rel string) string { return filepath.Join(d.dir, rel) }
