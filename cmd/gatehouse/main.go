// Command gatehouse is the DMZ gate between a cloud integration platform and
// the enterprise's internal hosts. See README.md and docs/design.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/accesslog"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "gatehouse:", err)
		os.Exit(1)
	}
}

// exitError ends the program with a code; msg, when set, goes to stderr.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.msg) }

// globals are the flags every command shares.
type globals struct {
	configPath string
	nodeConfig string
	logFormat  string
	logLevel   string
	stdout     io.Writer
	stderr     io.Writer
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", g.logFormat)
}

// run is the whole program; main only translates its error to an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "gatehouse",
		Short: "Admit only the cloud's published ranges, prove the tenant by client certificate, proxy to its internal hosts",
		Long: `gatehouse stands between a cloud integration platform and an enterprise's internal
network. XDP and nftables admit only the provider's published address ranges;
TLS is terminated with a client certificate that alone decides the tenant; each
tenant's HTTPS, SOAP and TN3270/TN5250 sessions go to its own internal hosts.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVarP(&g.configPath, "config", "c", config.DefaultPath, "configuration file")
	pf.StringVar(&g.nodeConfig, "node-config", "", "node-local overlay over the shared configuration file (interface, metrics.listen, bgp.router_id); default $"+config.NodeConfigEnv)
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newRunCmd(g), newCheckCmd(g), newVersionCmd(g), newStatusCmd(g), newTeardownCmd(g), newCertsCmd(), newFeedCmd(),
		newReloadCmd(g), newSessionsCmd(g), newWorkerCmd(g))
	return root
}

func newRunCmd(g *globals) *cobra.Command {
	var allowPrivate bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon: enforce the policy and proxy the tenants' sessions",
		Long: `Run applies the configuration to XDP, nftables, TLS and the proxies and keeps it
in force. SIGHUP reloads the configuration as a transaction (the old state stays
if anything in the new one is refused); SIGTERM and SIGINT drain open sessions
for shutdown_grace and exit. The kernel filters stay in force after exit: only
"gatehouse teardown" removes them. A pin directory on a bpffs private to the
daemon's mount namespace (started under "ip netns exec" or "unshare -m") would
not keep the XDP filter after exit: run refuses it unless --allow-private-bpffs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			// Requests do not wait on stdout: their lines are encoded
			// without reflection, buffered and written by the log's own
			// goroutine, and the last ones at exit.
			aw := accesslog.New(g.stdout, 0)
			defer aw.Close()
			access := slog.New(accesslog.NewHandler(aw)).With("log", "access")
			d, err := daemon.New(daemon.Options{ConfigPath: g.configPath, Logger: log, AccessLog: access, Signals: true, Version: version, LookupEnv: g.lookupEnv,
				NotifySocket: os.Getenv("NOTIFY_SOCKET"), WatchdogUSec: os.Getenv("WATCHDOG_USEC"), WatchdogPID: os.Getenv("WATCHDOG_PID"),
				AllowPrivateBPFFS: allowPrivate, Worker: daemon.WorkerOptions{LogFormat: g.logFormat, LogLevel: g.logLevel, Stderr: g.stderr}})
			if err != nil {
				return err
			}
			if err := d.Registry().Register(aw); err != nil {
				return fmt.Errorf("access log metrics: %w", err)
			}
			log.Info("gatehouse starting", "version", version, "config", g.configPath, "pid", os.Getpid())
			if err := d.Run(cmd.Context()); err != nil {
				return err
			}
			log.Info("gatehouse stopped")
			return nil
		},
	}
	cmd.Flags().BoolVar(&allowPrivate, allowPrivateFlag, false, "accept a pin directory private to this mount namespace: the XDP filter then lasts only as long as the daemon")
	return cmd
}

// allowPrivateFlag is shared by run and check, which must refuse alike.
const allowPrivateFlag = "allow-private-bpffs"

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and build information",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(g.stdout, "gatehouse %s\n", buildVersion())
			return nil
		},
	}
}

func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	parts := []string{version, info.GoVersion}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			parts = append(parts, "commit "+s.Value[:12])
		}
	}
	return strings.Join(parts, ", ")
}
