package main

import (
	"crypto"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// pkiPasswordEnv is read when no --password-file is given.
const pkiPasswordEnv = "GATEHOUSE_P12_PASSWORD"

// newCertsCmd is `gatehouse certs …`: a small CA for tenants' client
// certificates and the listeners' server certificates, interoperable with
// OpenSSL. Private keys are written 0600 and never printed.
func newCertsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "certs",
		Short: "PKI: CAs, server and client certificates, CSRs, PKCS#12, CRLs",
		Long: `A small PKI for gatehouse. A CA lives in a directory (ca.pem, ca.key,
revoked.txt, crlnumber). Keys are ECDSA P-256 unless --key-type rsa-3072 or
ed25519 is given, written as PKCS#8 PEM with mode 0600, and never printed.`,
	}
	c.AddCommand(pkiInitCACmd(), pkiIssueCmd(), pkiCSRCmd(), pkiSignCSRCmd(),
		pkiImportP12Cmd(), pkiExportP12Cmd(), pkiInspectCmd(), pkiRevokeCmd(), pkiCRLCmd())
	return c
}

func pkiInitCACmd() *cobra.Command {
	var o certs.CAOptions
	var keyType, parent string
	var days int
	c := &cobra.Command{
		Use:   "init-ca --dir DIR --cn NAME [--parent DIR] [--path-len N]",
		Short: "Create a CA in a directory: self-signed, or an intermediate signed by --parent",
		Long: `Create a CA in a directory: a self-signed root, or with --parent an intermediate
that the parent signs (its ca.pem holds it followed by its issuers). In the
configuration a root goes in tenants[].client_ca and an intermediate in
tenants[].intermediates; with a tenant crl, each of them publishes its CRL
into that one file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.KeyType = certs.KeyType(keyType)
			o.Validity = pkiDays(days)
			if parent != "" {
				p, err := certs.OpenCA(parent)
				if err != nil {
					return err
				}
				o.Parent = p
			}
			ca, err := certs.InitCA(o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote %s\nwrote %s (private key, mode 0600)\n",
				filepath.Join(o.Dir, certs.CACertFile), filepath.Join(o.Dir, certs.CAKeyFile))
			return pkiSummary(out, ca.Cert.Raw)
		},
	}
	f := c.Flags()
	f.StringVar(&o.Dir, "dir", "", "CA directory (created, mode 0700)")
	f.StringVar(&o.CommonName, "cn", "", "CA common name")
	f.StringVar(&o.Organization, "org", "", "organisation")
	f.StringVar(&keyType, "key-type", string(certs.KeyECDSAP256), "ecdsa-p256, rsa-3072 or ed25519")
	f.IntVar(&days, "days", 3650, "validity in days")
	f.BoolVar(&o.Force, "force", false, "replace an existing CA")
	f.StringVar(&parent, "parent", "", "directory of the CA that signs this one (an intermediate)")
	f.IntVar(&o.MaxPathLen, "path-len", 0, "how many CA levels may follow below this CA (0: it signs only end-entity certificates)")
	pkiRequire(c, "dir", "cn")
	return c
}

// pkiProfileFlags are the certificate contents shared by issue and sign-csr.
type pkiProfileFlags struct {
	server, client bool
	cn, tenant     string
	dns, ips, uris []string
	days           int
}

func (p *pkiProfileFlags) add(c *cobra.Command) {
	f := c.Flags()
	f.BoolVar(&p.server, "server", false, "server certificate (serverAuth)")
	f.BoolVar(&p.client, "client", false, "client certificate (clientAuth)")
	f.StringVar(&p.cn, "cn", "", "subject common name (default: first DNS name, or the tenant)")
	f.StringVar(&p.tenant, "tenant", "", "tenant id, written as the subject OU")
	f.StringSliceVar(&p.dns, "dns", nil, "DNS subject alternative name (repeatable)")
	f.StringSliceVar(&p.ips, "ip", nil, "IP subject alternative name (repeatable)")
	f.StringSliceVar(&p.uris, "uri", nil, "URI subject alternative name, e.g. spiffe://acme/cloud (repeatable)")
	f.IntVar(&p.days, "days", 365, "validity in days (capped at the CA's)")
}

func (p *pkiProfileFlags) profile() (certs.Profile, error) {
	ips, err := pkiIPs(p.ips)
	if err != nil {
		return certs.Profile{}, err
	}
	uris, err := pkiURIs(p.uris)
	if err != nil {
		return certs.Profile{}, err
	}
	if p.server == p.client {
		return certs.Profile{}, errors.New("give exactly one of --server or --client")
	}
	return certs.Profile{Server: p.server, Client: p.client, CommonName: p.cn, Tenant: p.tenant,
		DNS: p.dns, IPs: ips, URIs: uris, Validity: pkiDays(p.days)}, nil
}

func pkiIssueCmd() *cobra.Command {
	var pf pkiProfileFlags
	var caDir, out, keyType string
	var chain, force bool
	c := &cobra.Command{
		Use:   "issue --ca DIR (--server --dns NAME | --client --tenant ID) --out PREFIX",
		Short: "Issue a certificate and a new key (PREFIX.pem, PREFIX.key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := pf.profile()
			if err != nil {
				return err
			}
			ca, err := certs.OpenCA(caDir)
			if err != nil {
				return err
			}
			der, key, err := ca.Issue(p, certs.KeyType(keyType))
			if err != nil {
				return err
			}
			return pkiWritePair(cmd.OutOrStdout(), out, der, key, ca, chain, force)
		},
	}
	pf.add(c)
	f := c.Flags()
	f.StringVar(&caDir, "ca", "", "CA directory")
	f.StringVar(&out, "out", "", "output prefix: writes PREFIX.pem and PREFIX.key")
	f.StringVar(&keyType, "key-type", string(certs.KeyECDSAP256), "ecdsa-p256, rsa-3072 or ed25519")
	f.BoolVar(&chain, "chain", false, "append the CA certificate and its issuers to PREFIX.pem")
	f.BoolVar(&force, "force", false, "replace existing files")
	pkiRequire(c, "ca", "out")
	return c
}

func pkiWritePair(out io.Writer, prefix string, der []byte, key crypto.Signer, ca *certs.CA, chain, force bool) error {
	ders := [][]byte{der}
	if chain {
		ders = append(ders, pkiChain(ca)...)
	}
	keyPath, certPath := prefix+".key", prefix+".pem"
	if key != nil {
		if err := certs.WriteKeyFile(keyPath, key, force); err != nil {
			return err
		}
	}
	if err := certs.WriteCertFile(certPath, force, ders...); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s\n", certPath)
	if key != nil {
		fmt.Fprintf(out, "wrote %s (private key, mode 0600)\n", keyPath)
	}
	return pkiSummary(out, der)
}

func pkiCSRCmd() *cobra.Command {
	var keyPath, keyType, out, cn string
	var ous, dns, ips, uris []string
	var force bool
	c := &cobra.Command{
		Use:   "csr --key FILE --out FILE [--cn NAME] [--dns …] [--uri …]",
		Short: "Write a PKCS#10 request; the key (created when missing) stays here",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			key, err := certs.ReadKeyFile(keyPath)
			if errors.Is(err, os.ErrNotExist) {
				if key, err = certs.GenerateKey(certs.KeyType(keyType)); err != nil {
					return err
				}
				if err := certs.WriteKeyFile(keyPath, key, false); err != nil {
					return err
				}
				fmt.Fprintf(w, "wrote %s (new private key, mode 0600)\n", keyPath)
			} else if err != nil {
				return err
			}
			ipList, err := pkiIPs(ips)
			if err != nil {
				return err
			}
			uriList, err := pkiURIs(uris)
			if err != nil {
				return err
			}
			der, err := certs.CreateCSR(key, certs.CSROptions{CommonName: cn, OU: ous, DNS: dns, IPs: ipList, URIs: uriList})
			if err != nil {
				return err
			}
			if err := pkiWriteFile(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), force); err != nil {
				return err
			}
			fmt.Fprintf(w, "wrote %s\n", out)
			return pkiSummaryPEM(w, "CERTIFICATE REQUEST", der)
		},
	}
	f := c.Flags()
	f.StringVar(&keyPath, "key", "", "private key file; created (0600) when it does not exist")
	f.StringVar(&keyType, "key-type", string(certs.KeyECDSAP256), "type of a new key: ecdsa-p256, rsa-3072 or ed25519")
	f.StringVar(&out, "out", "", "CSR file (PEM)")
	f.StringVar(&cn, "cn", "", "subject common name")
	f.StringSliceVar(&ous, "ou", nil, "subject organisational unit (repeatable)")
	f.StringSliceVar(&dns, "dns", nil, "DNS name (repeatable)")
	f.StringSliceVar(&ips, "ip", nil, "IP address (repeatable)")
	f.StringSliceVar(&uris, "uri", nil, "URI (repeatable)")
	f.BoolVar(&force, "force", false, "replace an existing CSR file")
	pkiRequire(c, "key", "out")
	return c
}

func pkiSignCSRCmd() *cobra.Command {
	var pf pkiProfileFlags
	var caDir, csrPath, out string
	var chain, force bool
	c := &cobra.Command{
		Use:   "sign-csr --ca DIR --csr FILE (--server|--client) --out FILE",
		Short: "Issue a certificate for a PKCS#10 request (subject and SANs from the request unless given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := pf.profile()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(csrPath)
			if err != nil {
				return err
			}
			csr, err := certs.ParseCSR(data)
			if err != nil {
				return fmt.Errorf("%s: %w", csrPath, err)
			}
			ca, err := certs.OpenCA(caDir)
			if err != nil {
				return err
			}
			der, err := ca.SignCSR(csr, p)
			if err != nil {
				return err
			}
			ders := [][]byte{der}
			if chain {
				ders = append(ders, pkiChain(ca)...)
			}
			if err := certs.WriteCertFile(out, force, ders...); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", out)
			return pkiSummary(cmd.OutOrStdout(), der)
		},
	}
	pf.add(c)
	f := c.Flags()
	f.StringVar(&caDir, "ca", "", "CA directory")
	f.StringVar(&csrPath, "csr", "", "PKCS#10 request (PEM or DER)")
	f.StringVar(&out, "out", "", "certificate file (PEM)")
	f.BoolVar(&chain, "chain", false, "append the CA certificate and its issuers")
	f.BoolVar(&force, "force", false, "replace an existing file")
	pkiRequire(c, "ca", "csr", "out")
	return c
}

func pkiRequire(c *cobra.Command, names ...string) {
	for _, n := range names {
		if err := c.MarkFlagRequired(n); err != nil {
			panic(err) // a flag name typo in this file
		}
	}
}

func pkiDays(d int) time.Duration { return time.Duration(d) * 24 * time.Hour }

func pkiIPs(list []string) ([]net.IP, error) {
	var out []net.IP
	for _, s := range list {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("--ip %q: not an IP address", s)
		}
		out = append(out, ip)
	}
	return out, nil
}

func pkiURIs(list []string) ([]*url.URL, error) {
	var out []*url.URL
	for _, s := range list {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return nil, fmt.Errorf("--uri %q: want an absolute URI such as spiffe://acme/cloud", s)
		}
		out = append(out, u)
	}
	return out, nil
}

// pkiPassword reads the first line of file, or the environment variable.
func pkiPassword(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("password file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimSuffix(line, "\r"), nil
	}
	if pw, ok := os.LookupEnv(pkiPasswordEnv); ok {
		return pw, nil
	}
	return "", fmt.Errorf("no password: give --password-file or set $%s", pkiPasswordEnv)
}

func pkiWriteFile(path string, data []byte, force bool) error {
	return certs.WriteFile(path, data, 0o644, force)
}

// pkiWriteKeyLike writes a file holding a private key (PKCS#12) with 0600.
func pkiWriteKeyLike(path string, data []byte, force bool) error {
	return certs.WriteFile(path, data, 0o600, force)
}

func pkiSummary(w io.Writer, der []byte) error {
	return pkiSummaryPEM(w, "CERTIFICATE", der)
}

func pkiSummaryPEM(w io.Writer, typ string, der []byte) error {
	text, err := certs.Inspect(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(w, text)
	return err
}

func pkiReasonNames() []string {
	names := make([]string, 0, len(certs.Reasons))
	for n := range certs.Reasons {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// pkiChain is the CA certificate and its issuers, as DER.
func pkiChain(ca *certs.CA) [][]byte {
	out := [][]byte{ca.Cert.Raw}
	for _, c := range ca.Chain {
		out = append(out, c.Raw)
	}
	return out
}
