package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// newFeedCmd is `gatehouse feed …`: keys, signing and checking of range
// feed releases, and accepting a release the daemon holds in quarantine.
func newFeedCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "feed",
		Short: "Signed range feeds: keygen, sign, verify, inspect, accept, refresh",
		Long: `A feed release is a directory (or web path) holding the provider's file(s)
exactly as published, a manifest.json naming them with length and SHA-256, and
minisign signatures manifest.json.minisig, manifest.json.minisig.2, … The minisign
tool verifies and makes the same signatures.`,
	}
	c.AddCommand(feedKeygenCmd(), feedSignCmd(), feedVerifyCmd(), feedInspectCmd(), feedAcceptCmd(), feedRefreshCmd())
	return c
}

// feedPassword reads a key password from a file ("-": standard input),
// first line only.
func feedPassword(cmd *cobra.Command, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("password: %w", err)
	}
	pw, _, _ := strings.Cut(string(data), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", errors.New("password: empty")
	}
	return pw, nil
}

func feedKeygenCmd() *cobra.Command {
	var out, pwFile string
	var unencrypted, force bool
	c := &cobra.Command{
		Use:   "keygen --out PREFIX (--password-file FILE | --unencrypted)",
		Short: "Make a minisign key pair: PREFIX.pub and PREFIX.key (mode 0600)",
		Long: `keygen writes a key pair the minisign tool reads as well. With --password-file the
secret key is encrypted as minisign does (scrypt, about 1 GiB of memory while
encrypting or decrypting); --unencrypted is minisign -W. The public key line
goes into the configuration's minisign_keys.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required")
			}
			if (pwFile == "") == !unencrypted {
				return errors.New("give exactly one of --password-file and --unencrypted")
			}
			pw, err := feedPassword(cmd, pwFile)
			if err != nil {
				return err
			}
			pubFile, secFile, pub, err := rules.GenerateKey(pw)
			if err != nil {
				return err
			}
			if err := writeKeyPair(out, secFile, pubFile, force); err != nil {
				return err
			}
			pubPath, keyPath := out+".pub", out+".key"
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "wrote %s (secret key, mode 0600)\nwrote %s\n", keyPath, pubPath)
			fmt.Fprintf(w, "key id %016X\npublic key (for minisign_keys): %s\n", pub.ID(), pub.String())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&out, "out", "", "path prefix of the key files")
	f.StringVar(&pwFile, "password-file", "", `file holding the password ("-": standard input)`)
	f.BoolVar(&unencrypted, "unencrypted", false, "store the secret key without a password (like minisign -W)")
	f.BoolVar(&force, "force", false, "replace existing key files")
	return c
}

// writeKeyPair writes PREFIX.key (mode 0600) and PREFIX.pub. Without
// force, a name already taken (by a file or a symbolic link) is refused in
// the same step that would create the file, and a pair is written whole or
// not at all; with force, both are replaced, a symbolic link itself and
// never what it points to.
func writeKeyPair(prefix string, sec, pub []byte, force bool) error {
	keyPath, pubPath := prefix+".key", prefix+".pub"
	if force {
		if err := atomicfile.Write(keyPath, sec, 0o600); err != nil {
			return err
		}
		return atomicfile.Write(pubPath, pub, 0o644)
	}
	if err := atomicfile.Create(keyPath, sec, 0o600); err != nil {
		return existsHint(err)
	}
	if err := atomicfile.Create(pubPath, pub, 0o644); err != nil {
		// The secret key was created just now, by this call: without its
		// public key it is of no use.
		os.Remove(keyPath)
		return existsHint(err)
	}
	return nil
}

// existsHint points at --force when a file is in the way.
func existsHint(err error) error {
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w (use --force to replace it)", err)
	}
	return err
}

func feedSignCmd() *cobra.Command {
	var dir, keyPath, pwFile, source, format, comment string
	var serial uint64
	var index int
	var valid time.Duration
	c := &cobra.Command{
		Use:   "sign --dir DIR --key FILE [--source NAME --format FMT [--serial N] FILE…]",
		Short: "Write manifest.json for feed files in DIR and sign it, or co-sign an existing manifest",
		Long: `With files, sign writes DIR/manifest.json (source, serial, issued, expires, and
each file's name, format, length and SHA-256) and signs it into
DIR/manifest.json.minisig (--index N: manifest.json.minisig.N). The serial
defaults to the current Unix time and must exceed the serial of a manifest
already in DIR. Without files, sign adds a signature to the manifest already in
DIR: how a second key holder co-signs for a threshold.`,
		RunE: func(cmd *cobra.Command, files []string) error {
			if dir == "" || keyPath == "" {
				return errors.New("--dir and --key are required")
			}
			if index < 1 || index > rules.MaxSignatures {
				return fmt.Errorf("--index %d: want 1..%d", index, rules.MaxSignatures)
			}
			pw, err := feedPassword(cmd, pwFile)
			if err != nil {
				return err
			}
			keyData, err := os.ReadFile(keyPath)
			if err != nil {
				return err
			}
			key, err := rules.ParseSecretKey(keyData, pw)
			if err != nil {
				return fmt.Errorf("%s: %w", keyPath, err)
			}
			mPath := filepath.Join(dir, rules.ManifestName)
			w := cmd.OutOrStdout()
			var raw []byte
			if len(files) == 0 {
				if raw, err = os.ReadFile(mPath); err != nil {
					return fmt.Errorf("co-sign: %w", err)
				}
				m, err := rules.ParseManifest(raw)
				if err != nil {
					return fmt.Errorf("co-sign %s: %w", mPath, err)
				}
				fmt.Fprintf(w, "co-signing %s: source %s, serial %d, %d file(s)\n", mPath, m.Source, m.Serial, len(m.Files))
			} else {
				if source == "" || format == "" {
					return errors.New("--source and --format are required to write a manifest")
				}
				now := time.Now().UTC().Truncate(time.Second)
				if serial == 0 {
					serial = uint64(now.Unix())
				}
				if old, err := os.ReadFile(mPath); err == nil {
					if m, err := rules.ParseManifest(old); err == nil && m.Serial >= serial {
						return fmt.Errorf("serial %d is not above %d of the manifest in %s", serial, m.Serial, dir)
					}
				}
				m := rules.Manifest{Source: source, Serial: serial, Issued: now, Expires: now.Add(valid)}
				for _, name := range files {
					if filepath.Base(name) != name {
						return fmt.Errorf("%s: give file names inside --dir, not paths", name)
					}
					data, err := os.ReadFile(filepath.Join(dir, name))
					if err != nil {
						return err
					}
					// Refuse to sign what the daemon would refuse to parse.
					if _, err := rules.Parse(format, data); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					m.Files = append(m.Files, rules.NewManifestFile(name, format, data))
				}
				if raw, err = m.Marshal(); err != nil {
					return err
				}
				if _, err := rules.ParseManifest(raw); err != nil {
					return err
				}
				// Signatures of the old manifest are void now.
				for i := 1; i <= rules.MaxSignatures; i++ {
					if err := os.Remove(filepath.Join(dir, rules.SignatureName(i))); err != nil && !errors.Is(err, os.ErrNotExist) {
						return err
					}
				}
				if err := atomicfile.Write(mPath, raw, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(w, "wrote %s: source %s, serial %d, expires %s\n", mPath, source, serial, m.Expires.Format(time.RFC3339))
			}
			if comment == "" {
				comment = fmt.Sprintf("timestamp:%d\tfile:%s\thashed", time.Now().Unix(), rules.ManifestName)
			}
			sigPath := filepath.Join(dir, rules.SignatureName(index))
			if err := atomicfile.Write(sigPath, rules.SignManifest(raw, key, comment), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(w, "wrote %s (key id %016X)\n", sigPath, key.ID())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "release directory holding the feed files")
	f.StringVar(&keyPath, "key", "", "minisign secret key file")
	f.StringVar(&pwFile, "password-file", "", `file holding the key's password ("-": standard input)`)
	f.StringVar(&source, "source", "", "source name: the feed's name in the daemon's configuration")
	f.StringVar(&format, "format", "", "format of the files: "+strings.Join(rules.Formats, ", "))
	f.Uint64Var(&serial, "serial", 0, "release serial (default: current Unix time)")
	f.DurationVar(&valid, "valid", 7*24*time.Hour, "validity from now; the release expires after it")
	f.IntVar(&index, "index", 1, "signature number: 1 writes manifest.json.minisig, N manifest.json.minisig.N")
	f.StringVar(&comment, "trusted-comment", "", "trusted comment of the signature")
	return c
}

// feedSelectFlag collects repeated --select key=v1,v2 flags.
type feedSelectFlag map[string][]string

func (s feedSelectFlag) String() string {
	var parts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range s {
			if !yield(k) {
				return
			}
		}
	}) {
		parts = append(parts, k+"="+strings.Join(s[k], ","))
	}
	return strings.Join(parts, " ")
}

func (s feedSelectFlag) Set(v string) error {
	k, vals, ok := strings.Cut(v, "=")
	if !ok || k == "" || vals == "" {
		return fmt.Errorf("want key=value[,value…], got %q", v)
	}
	s[k] = append(s[k], strings.Split(vals, ",")...)
	return nil
}

func (s feedSelectFlag) Type() string { return "key=values" }

// feedConfigPath is the root command's --config when this command hangs
// below it, else the default path.
func feedConfigPath(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("config"); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	return config.DefaultPath
}

// readBundle reads a release from a directory (or the path of its
// manifest.json): manifest, signatures, and the files the manifest names.
// Nothing is trusted yet; the caller verifies.
func readBundle(path string) (rules.Bundle, error) {
	dir := path
	if filepath.Base(path) == rules.ManifestName {
		dir = filepath.Dir(path)
	}
	var b rules.Bundle
	var err error
	if b.Manifest, err = os.ReadFile(filepath.Join(dir, rules.ManifestName)); err != nil {
		return b, err
	}
	for i := 1; i <= rules.MaxSignatures; i++ {
		s, err := os.ReadFile(filepath.Join(dir, rules.SignatureName(i)))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return b, err
		}
		b.Signatures = append(b.Signatures, s)
	}
	// The names come from a manifest not yet verified: ParseManifest
	// allows plain file names only, so nothing outside dir is read.
	m, err := rules.ParseManifest(b.Manifest)
	if err != nil {
		return b, nil // Verify reports it in order, after the signatures
	}
	b.Files = map[string][]byte{}
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(dir, f.Name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return b, err
		}
		b.Files[f.Name] = data
	}
	return b, nil
}

func feedVerifyCmd() *cobra.Command {
	var feedName, name, format string
	var keys []string
	var threshold, min4, min6 int
	var exempt []string
	sel := feedSelectFlag{}
	c := &cobra.Command{
		Use:   "verify (--feed NAME | --name NAME --format FMT --key RWQ…) DIR",
		Short: "Verify a release in DIR exactly as the daemon would, and summarise it",
		Long: `verify runs every check the daemon runs on a new release, in the same order:
size, signatures, manifest, source name, expiry, hashes, strict parse, guards,
selection, aggregation. With --feed the keys, format, selection and guards come
from the configuration (--config); otherwise from the flags. It exits 1 with the
reason when the release would be refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var fc rules.FeedConfig
			g := rules.Guards{MinPrefixV4: min4, MinPrefixV6: min6}
			if feedName != "" {
				cfg, err := config.Load(feedConfigPath(cmd), nil)
				if err != nil {
					return err
				}
				fcs, cg, err := daemon.FeedConfigs(cfg)
				if err != nil {
					return err
				}
				i := slices.IndexFunc(fcs, func(f rules.FeedConfig) bool { return f.Name == feedName })
				if i < 0 {
					return fmt.Errorf("feed %q is not configured in %s", feedName, feedConfigPath(cmd))
				}
				fc, g = fcs[i], cg
			} else {
				if name == "" || format == "" || len(keys) == 0 {
					return errors.New("give --feed, or --name, --format and --key")
				}
				if threshold == 0 {
					threshold = 1
				}
				fc = rules.FeedConfig{Name: name, Format: format, Select: sel, Keys: keys, Threshold: threshold}
				for _, s := range exempt {
					p, err := netip.ParsePrefix(s)
					if err != nil {
						return fmt.Errorf("--reserved-exempt: %w", err)
					}
					g.ReservedExempt = append(g.ReservedExempt, p)
				}
			}
			v, err := rules.NewVerifier(fc, g, nil)
			if err != nil {
				return err
			}
			b, err := readBundle(args[0])
			if err != nil {
				return err
			}
			ver, err := v.Verify(b, nil, rules.VerifyOptions{})
			if err != nil {
				return exitError{code: 1, msg: fmt.Sprintf("gatehouse: release in %s REFUSED (%s): %v", args[0], rules.ReasonOf(err), err)}
			}
			w := cmd.OutOrStdout()
			m := ver.Manifest
			fmt.Fprintf(w, "release in %s verified\n", args[0])
			fmt.Fprintf(w, "  source %s, serial %d, issued %s, expires %s\n", m.Source, m.Serial,
				m.Issued.UTC().Format(time.RFC3339), m.Expires.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "  %d signature file(s), threshold %d of %d key(s)\n", len(b.Signatures), fc.Threshold, len(fc.Keys))
			fmt.Fprintf(w, "  entries %d, selected %d, aggregated %d\n", ver.Entries, ver.Selected, len(ver.Prefixes))
			n4, n6 := familyCounts(ver.Prefixes)
			fmt.Fprintf(w, "  ipv4 %d prefixes covering %d addresses\n", n4, ver.Coverage.V4)
			fmt.Fprintf(w, "  ipv6 %d prefixes covering %s addresses\n", n6, ver.Coverage.V6.String())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&feedName, "feed", "", "take keys, format, selection and guards from this configured feed")
	f.StringVar(&name, "name", "", "source name the manifest must carry")
	f.StringVar(&format, "format", "", "feed format: "+strings.Join(rules.Formats, ", "))
	f.StringArrayVar(&keys, "key", nil, "trusted minisign public key (RWQ…), repeatable")
	f.IntVar(&threshold, "threshold", 1, "distinct valid signatures required")
	f.Var(sel, "select", "selection key=value[,value…], repeatable")
	f.IntVar(&min4, "min-prefix-v4", rules.DefaultMinPrefixV4, "shortest IPv4 prefix allowed")
	f.IntVar(&min6, "min-prefix-v6", rules.DefaultMinPrefixV6, "shortest IPv6 prefix allowed")
	f.StringArrayVar(&exempt, "reserved-exempt", nil, "special-purpose prefix a feed may carry, repeatable")
	return c
}

func familyCounts(ps []netip.Prefix) (v4, v6 int) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	return v4, v6
}
