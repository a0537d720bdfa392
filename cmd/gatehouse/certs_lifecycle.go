package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

func pkiImportP12Cmd() *cobra.Command {
	var in, out, pwFile string
	var force bool
	c := &cobra.Command{
		Use:   "import-p12 --in FILE.p12 --out PREFIX [--password-file FILE]",
		Short: "Unpack a PKCS#12 file into PREFIX.pem (certificate and chain) and PREFIX.key",
		Long: "Unpack a PKCS#12 file. The password comes from --password-file (first line) or $" +
			pkiPasswordEnv + "; it is never a command-line argument.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := pkiPassword(pwFile)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(in)
			if err != nil {
				return err
			}
			key, cert, chain, err := certs.DecodeP12(data, pw)
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			ders := [][]byte{cert.Raw}
			for _, c := range chain {
				ders = append(ders, c.Raw)
			}
			if err := certs.WriteKeyFile(out+".key", key, force); err != nil {
				return err
			}
			if err := certs.WriteCertFile(out+".pem", force, ders...); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "wrote %s (%d certificates)\nwrote %s (private key, mode 0600)\n", out+".pem", len(ders), out+".key")
			return pkiSummary(w, cert.Raw)
		},
	}
	f := c.Flags()
	f.StringVar(&in, "in", "", "PKCS#12 file")
	f.StringVar(&out, "out", "", "output prefix")
	f.StringVar(&pwFile, "password-file", "", "file whose first line is the password (else $"+pkiPasswordEnv+")")
	f.BoolVar(&force, "force", false, "replace existing files")
	pkiRequire(c, "in", "out")
	return c
}

func pkiExportP12Cmd() *cobra.Command {
	var certPath, keyPath, chainPath, out, pwFile string
	var force bool
	c := &cobra.Command{
		Use:   "export-p12 --cert FILE --key FILE --out FILE.p12 [--chain FILE] [--password-file FILE]",
		Short: "Bundle a key, its certificate and chain as PKCS#12 (AES-256, PBKDF2, SHA-256 MAC)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := pkiPassword(pwFile)
			if err != nil {
				return err
			}
			if pw == "" {
				return errors.New("refusing to export a private key without a password")
			}
			list, err := certs.ReadCertsFile(certPath)
			if err != nil {
				return err
			}
			key, err := certs.ReadKeyFile(keyPath)
			if err != nil {
				return err
			}
			chain := list[1:]
			if chainPath != "" {
				extra, err := certs.ReadCertsFile(chainPath)
				if err != nil {
					return err
				}
				chain = append(chain, extra...)
			}
			data, err := certs.EncodeP12(key, list[0], chain, pw)
			if err != nil {
				return fmt.Errorf("%s and %s: %w", certPath, keyPath, err)
			}
			if err := pkiWriteKeyLike(out, data, force); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (PKCS#12 with private key, mode 0600, %d chain certificates)\n", out, len(chain))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&certPath, "cert", "", "certificate (PEM; further certificates in it are the chain)")
	f.StringVar(&keyPath, "key", "", "private key (PEM)")
	f.StringVar(&chainPath, "chain", "", "extra chain certificates (PEM)")
	f.StringVar(&out, "out", "", "PKCS#12 file")
	f.StringVar(&pwFile, "password-file", "", "file whose first line is the password (else $"+pkiPasswordEnv+")")
	f.BoolVar(&force, "force", false, "replace an existing file")
	pkiRequire(c, "cert", "key", "out")
	return c
}

func pkiInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect FILE…",
		Short: "One-screen summary of certificates, bundles, CSRs, CRLs or keys (PEM or DER; - for stdin)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			for i, name := range args {
				var data []byte
				var err error
				if name == "-" {
					data, err = io.ReadAll(cmd.InOrStdin())
				} else {
					data, err = os.ReadFile(name)
				}
				if err != nil {
					return err
				}
				text, err := certs.Inspect(data, time.Now())
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if len(args) > 1 {
					if i > 0 {
						fmt.Fprintln(w)
					}
					fmt.Fprintf(w, "== %s\n", name)
				}
				fmt.Fprint(w, text)
			}
			return nil
		},
	}
}

func pkiRevokeCmd() *cobra.Command {
	var caDir, serialHex, certPath, reason string
	c := &cobra.Command{
		Use:   "revoke --ca DIR (--serial HEX | --cert FILE) [--reason keyCompromise]",
		Short: "Add a certificate to the CA's revocation index (publish with `certs crl`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			code, ok := certs.Reasons[reason]
			if !ok {
				return fmt.Errorf("--reason %q: %w", reason, certs.ErrUnknownReason)
			}
			ca, err := certs.OpenCA(caDir)
			if err != nil {
				return err
			}
			if (serialHex == "") == (certPath == "") {
				return errors.New("give exactly one of --serial or --cert")
			}
			if certPath != "" {
				list, err := certs.ReadCertsFile(certPath)
				if err != nil {
					return err
				}
				cert := list[0]
				if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
					return fmt.Errorf("%s was not issued by this CA: %w", certPath, err)
				}
				serialHex = fmt.Sprintf("%x", cert.SerialNumber)
			}
			s, err := certs.ParseSerial(serialHex)
			if err != nil {
				return err
			}
			if err := ca.Revoke(s, code); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked serial %x (%s) in %s; run `gatehouse certs crl` to publish\n",
				s, reason, filepath.Join(caDir, certs.CAIndexFile))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&caDir, "ca", "", "CA directory")
	f.StringVar(&serialHex, "serial", "", "serial number in hex")
	f.StringVar(&certPath, "cert", "", "certificate file to revoke")
	f.StringVar(&reason, "reason", "unspecified", "reason: "+strings.Join(pkiReasonNames(), ", "))
	pkiRequire(c, "ca")
	return c
}

func pkiCRLCmd() *cobra.Command {
	var caDir, out string
	var days int
	var der bool
	c := &cobra.Command{
		Use:   "crl --ca DIR --out FILE [--days 7] [--der]",
		Short: "Issue a CRL of every revoked serial",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := certs.OpenCA(caDir)
			if err != nil {
				return err
			}
			b, err := ca.CRL(pkiDays(days))
			if err != nil {
				return err
			}
			data := b
			if !der {
				data = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: b})
			}
			// A CRL is replaced on every run: it is published state, not a secret.
			if err := pkiWriteFile(out, data, true); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", out)
			return pkiSummaryPEM(cmd.OutOrStdout(), "X509 CRL", b)
		},
	}
	f := c.Flags()
	f.StringVar(&caDir, "ca", "", "CA directory")
	f.StringVar(&out, "out", "", "CRL file")
	f.IntVar(&days, "days", 7, "days until nextUpdate")
	f.BoolVar(&der, "der", false, "write DER instead of PEM")
	pkiRequire(c, "ca", "out")
	return c
}
