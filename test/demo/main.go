package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Hidden sub-commands: the demo re-executes itself with one of these as the
// first argument inside a namespace (`ip netns exec NS demo __backends …`).
const (
	subBackends = "__backends"
	subScan     = "__scan"
	subProbe    = "__probe"
)

// tool is a program the demo runs and the Debian package that provides it.
type tool struct{ name, pkg string }

var tools = []tool{
	{"ip", "iproute2"},
	{"nft", "nftables"},
	{"bpftool", "bpftool"},
	{"curl", "curl"},
	{"s3270", "s3270"},
	{"mount", "mount"},
	{"umount", "mount"},
}

var errUsage = errors.New("usage")

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case subBackends:
			if err := runBackends(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "demo backends:", err)
				os.Exit(1)
			}
			return
		case subScan:
			if err := runScan(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "demo scan:", err)
				os.Exit(1)
			}
			return
		case subProbe:
			if err := runProbe(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "demo probe:", err)
				os.Exit(1)
			}
			return
		}
	}
	os.Exit(run())
}

// run is the demo proper; its result is the exit code.
func run() int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	check := fs.Bool("check", os.Getenv("GATEHOUSE_DEMO_CHECK") == "1",
		"run every step once, print the results and exit (0 only if every step passed) instead of waiting for Ctrl-C")
	bin := fs.String("gatehouse", os.Getenv("GATEHOUSE_BIN"),
		"gatehouse `PATH` (default: bin/gatehouse, else built with go build into the temporary directory)")
	connector := fs.Bool("connector", false,
		"build a site with no inbound port instead: the gateway on the cloud side, a firewall that lets nothing new in, the connector inside dialling out")
	ha := fs.Bool("ha", false,
		"build a fleet instead: three active gatehouse nodes announcing one service address over BGP to a BIRD router (ECMP); kill one, drain another, with a client in a loop")
	keep := fs.Bool("keep-on-failure", false, "in --check mode, wait for Ctrl-C after a failed step instead of cleaning up at once")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: demo [--check] [--connector | --ha] [--gatehouse PATH]\n\n"+
			"Builds a cloud, an intruder, a DMZ running gatehouse and an internal network in\n"+
			"network namespaces, shows what gatehouse admits and refuses, and removes it all\n"+
			"on Ctrl-C. With --connector: a cloud with the gateway, a firewall that lets no\n"+
			"new connection in, and an internal network whose connector dials out. With --ha:\n"+
			"three nodes behind a BGP ECMP router; one is killed, one drained. Needs root.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}

	if *connector && *ha {
		fmt.Fprintln(os.Stderr, "demo: --connector and --ha are separate demos; choose one")
		return 2
	}
	if err := preflight(*ha); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}

	// Ctrl-C or SIGTERM cancels ctx: running steps stop, cleanup follows.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	d := &demo{out: os.Stdout, check: *check, connector: *connector, ha: *ha}
	defer d.cleanup()
	defer func() {
		// A panic must not leave namespaces and mounts behind.
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "demo: panic: %v\n", r)
			d.failed = true
		}
	}()

	setup, steps, status, handsOn := d.setup, d.runSteps, d.printStatus, d.printHandsOn
	if d.connector {
		setup, steps, status, handsOn = d.setupConnector, d.runConnectorSteps, d.printConnectorStatus, d.printConnectorHandsOn
	}
	if d.ha {
		setup, steps, status, handsOn = d.setupHA, d.runHASteps, d.printHAStatus, d.printHAHandsOn
	}
	if err := setup(ctx, *bin); err != nil {
		d.fail("setup", err)
		d.showDaemonLog()
		return 1
	}
	steps(ctx)
	if ctx.Err() != nil {
		fmt.Fprintln(d.out, "\ninterrupted: cleaning up")
		return 1
	}
	status(ctx)
	if d.failed {
		d.showDaemonLog()
	}

	if d.check && !(d.failed && *keep) {
		return d.summary()
	}
	handsOn()
	fmt.Fprintln(d.out, "\ngatehouse demo is running. Press Ctrl-C to stop it and remove everything it created.")
	<-ctx.Done()
	fmt.Fprintln(d.out, "\nstopping: cleaning up")
	return d.summary()
}

// preflight refuses to start without root or without a tool, naming the
// Debian package to install, before anything is created.
func preflight(ha bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, XDP, nftables, bpffs): run `sudo make demo`")
	}
	var missing []string
	pkgs := map[string]bool{}
	var install []string
	need := tools
	if ha {
		need = append(need, tool{"bird", "bird2"}, tool{"birdc", "bird2"})
	}
	for _, t := range need {
		if _, err := exec.LookPath(t.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.name, t.pkg))
			if !pkgs[t.pkg] {
				pkgs[t.pkg] = true
				install = append(install, t.pkg)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s\n  install them with: apt-get install %s   (or run `make deps`)",
			strings.Join(missing, ", "), strings.Join(install, " "))
	}
	return nil
}

// findGatehouse returns the gatehouse binary to run: the flag, bin/gatehouse
// of the module, or a fresh build into dir.
func findGatehouse(ctx context.Context, flagged, dir string) (string, error) {
	if flagged != "" {
		p, err := filepath.Abs(flagged)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("gatehouse binary: %w", err)
		}
		return p, nil
	}
	if p, err := filepath.Abs(filepath.Join("bin", "gatehouse")); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", errors.New("no bin/gatehouse and no Go toolchain to build it: run `make build` first or pass --gatehouse")
	}
	p := filepath.Join(dir, "gatehouse")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", p, "./cmd/gatehouse")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/gatehouse (run the demo from the repository root): %w\n%s", err, out)
	}
	return p, nil
}

// waitUntil polls ok every 50 ms until it returns true, ctx ends or limit
// passes.
func waitUntil(ctx context.Context, limit time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(limit)
	for {
		if ok() {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
