package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Mode says how much inbound traffic the kernel layers police.
type Mode string

const (
	// ModeListeners polices the listeners' ports only; other ports pass.
	ModeListeners Mode = "listeners"
	// ModeStrict drops every new inbound flow that is neither to a listener
	// from an admitted source nor to a management port from a management range.
	ModeStrict Mode = "strict"
)

// XDPMode says how the XDP program is attached.
type XDPMode string

const (
	XDPAuto    XDPMode = "auto" // native first, generic when native fails
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
	XDPOff     XDPMode = "off"
)

// Protocol is what a listener speaks once TLS is terminated.
type Protocol string

const (
	ProtoHTTPS  Protocol = "https"
	ProtoSOAP   Protocol = "soap"
	ProtoTN3270 Protocol = "tn3270"
	ProtoTN5250 Protocol = "tn5250"
	// ProtoTNVIP carries Bull VIP7800-family terminals over Telnet (RFC 1921).
	ProtoTNVIP Protocol = "tnvip"
	ProtoTCP   Protocol = "tcp"
)

// Protocols lists every protocol a listener may have, in a stable order.
var Protocols = []Protocol{ProtoHTTPS, ProtoSOAP, ProtoTN3270, ProtoTN5250, ProtoTNVIP, ProtoTCP}

// Telnet reports whether the protocol is a terminal protocol over Telnet:
// the listener's sessions go through proxy/telnet, take limits.telnet, and
// may negotiate START_TLS.
func (p Protocol) Telnet() bool {
	return p == ProtoTN3270 || p == ProtoTN5250 || p == ProtoTNVIP
}

// Rate is a token bucket: PerSecond sustained, Burst at once. Zero PerSecond
// means no limit.
type Rate struct {
	PerSecond uint32
	Burst     uint32
}

// ScanBlock configures port-scan detection: a source that touches
// DistinctPorts closed ports within Window is blocked for BlockFor.
// Zero DistinctPorts disables detection.
type ScanBlock struct {
	DistinctPorts int
	Window        time.Duration
	BlockFor      time.Duration
}

// Management is a range allowed to reach the appliance's own services
// (ssh, the metrics port) in strict mode.
type Management struct {
	Prefix netip.Prefix
	Ports  []uint16
}

// MaxManagementPairs is how many (range, port) pairs of Management the XDP
// filter holds: its generation header has room for this many.
const MaxManagementPairs = 32

// Enforcement is what the kernel layers do.
type Enforcement struct {
	XDP         XDPMode
	NFTables    bool
	Mode        Mode
	Management  []Management
	ScanBlock   ScanBlock
	NewConnRate Rate
	// Forward also polices traffic routed through the appliance to the
	// listener ports of internal hosts (nftables forward chain), for DMZ
	// designs where gatehouse routes rather than terminates.
	Forward bool
	// MaxConnsPerSource caps concurrent connections from one source address
	// to the listener ports (nftables ct count). Zero means no cap.
	MaxConnsPerSource uint32
	// SourcePrefix says how many leading bits of a source address count as
	// one source for the per-source limits of every layer.
	SourcePrefix SourcePrefix
}

// Identities narrow which certificates from a tenant's CA belong to the
// tenant. All lists empty means any certificate the tenant's CA issued.
type Identities struct {
	URISAN             []string // exact or with '*' wildcards
	DNSSAN             []string
	CommonName         []string
	OrganizationalUnit []string
	FingerprintSHA256  []string // hex of SHA-256 over the DER certificate
	SPKISHA256         []string // hex of SHA-256 over the DER SubjectPublicKeyInfo
}

// Empty reports whether no identity narrows the tenant.
func (i Identities) Empty() bool {
	return len(i.URISAN)+len(i.DNSSAN)+len(i.CommonName)+len(i.OrganizationalUnit)+
		len(i.FingerprintSHA256)+len(i.SPKISHA256) == 0
}

// Tenant is a customer of the integration platform, proven by its client
// certificate.
type Tenant struct {
	ID       string
	ClientCA string // PEM file of the tenant's root CAs (self-signed), its only trust anchors
	// Intermediates is an optional PEM file of intermediate CAs, each
	// chaining to a root of ClientCA. When set, only certificates one of
	// them issued are the tenant's; either way clients may send their leaf
	// alone.
	Intermediates string
	CRL           string // optional CRL file (PEM or DER), one CRL per issuing CA of the chain
	Identities    Identities
	// Environments, when set, split the tenant's certificates: each one
	// the tenant's Identities accept must match the identities of exactly
	// one environment. None means the one implicit DefaultEnvironment.
	Environments []Environment
}

// CRLStale says what a CRL past its nextUpdate does.
type CRLStale string

const (
	CRLStaleFail CRLStale = "fail" // refuse the certificates it speaks for
	CRLStaleWarn CRLStale = "warn" // log once and accept them
)

// TLS is how the listeners' TLS behaves beyond their certificates.
type TLS struct {
	CRLStale CRLStale // empty means CRLStaleFail
	// SessionTicketsDisabled turns resumption with session tickets off.
	SessionTicketsDisabled bool
	// TicketRotation is how often each listener gets a new session-ticket
	// key; the last three decrypt. Zero means DefaultTicketRotation.
	TicketRotation time.Duration
	// TicketKeys is a file of session-ticket keys the admin distributes to
	// every node, the current key first; when set, it replaces the
	// rotation (the admin rotates) and a session resumes on any node that
	// holds the key.
	TicketKeys string
}

// DefaultTicketRotation is the session-ticket key rotation when none is set.
const DefaultTicketRotation = 6 * time.Hour

// Route carries one tenant's traffic on a listener to one internal backend.
type Route struct {
	Tenant string
	// Environment is the tenant's environment the route serves; empty is
	// the implicit DefaultEnvironment of a tenant without environments.
	Environment string
	// Host matches SNI or the HTTP Host header; empty matches any.
	Host string
	// Path is a URL path prefix for https and soap; empty means "/".
	Path string
	// Backend is a URL (http://, https://) for https and soap, host:port
	// otherwise. Backends, when set, lists every backend of the route
	// (Backend is then its first): a failing one is skipped for a while.
	Backend  string
	Backends []string
	// HealthPath, when set on an https or soap route, is fetched from every
	// backend every HealthInterval; a backend that fails it is skipped.
	HealthPath     string
	HealthInterval time.Duration
	BackendCA      string // verify a TLS backend against this CA
	BackendCert    string // optional client certificate towards the backend
	BackendKey     string
	BackendTLS     bool // telnet/tcp: connect to the backend with TLS

	SOAPActions      []string // soap: allowed operations
	AllowWSDL        bool
	PathParams       bool     // https, soap: allow ;parameters in path segments
	WebSocket        bool     // https: let WebSocket upgrades through
	LUNames          []string // tn3270: allowed LU names (exact or '*' pattern)
	TerminalTypes    []string // tn3270, tn5250, tnvip
	ForceLU          string   // tn3270
	DevNames         []string // tn5250: allowed DEVNAME patterns
	AllowsAutoSignOn bool     // tn5250 (refuse_auto_sign_on: false): USER, IBMRSEED … may reach the host once the terminal type is accepted
}

// CertKey is a certificate file and its key file.
type CertKey struct{ Cert, Key string }

// Listener is a TLS endpoint of the appliance.
type Listener struct {
	Name string
	// Addr is the address to bind; invalid (zero) means every address.
	Addr       netip.Addr
	Port       uint16
	Protocol   Protocol
	ServerCert string // the default certificate (no SNI, or no SNI match)
	ServerKey  string
	// ExtraCerts are further certificates chosen by SNI.
	ExtraCerts []CertKey
	StartTLS   bool // tn3270/tn5250/tnvip: Telnet START_TLS instead of implicit TLS
	// Tunnel marks a gateway's listener: it routes nothing itself, and
	// every identified connection goes down a tunnel of its tenant's
	// connectors, which hold the routes.
	Tunnel bool
	Routes []Route
	// Limits apply to every connection of the listener; TenantLimits, to
	// the connections of the tenants that override some of them (see
	// ForTenant). Both are resolved completely by the configuration.
	Limits       Limits
	TenantLimits map[string]Limits
}

// ListenAddress returns the address in the form net.Listen takes.
func (l Listener) ListenAddress() string {
	if !l.Addr.IsValid() {
		return fmt.Sprintf(":%d", l.Port)
	}
	return netip.AddrPortFrom(l.Addr, l.Port).String()
}

// Admitted is the set of source ranges allowed to reach the listeners, one
// list per family. Each list is sorted, canonical (no host bits) and has no
// overlapping or adjacent-mergeable prefixes: the kernel layers load it as is.
type Admitted struct {
	V4 []netip.Prefix
	V6 []netip.Prefix
	// PerFeed counts the prefixes each source contributed before the union,
	// for the admitted_prefixes metric; "static" is static_ranges.
	PerFeed map[string]FamilyCount
}

// FamilyCount is a number of prefixes per address family.
type FamilyCount struct{ V4, V6 int }

// Contains reports whether addr lies in the admitted set. It is a plain
// binary search, meant for tests and tools, not the packet path.
func (a Admitted) Contains(addr netip.Addr) bool {
	addr = addr.Unmap()
	list := a.V6
	if addr.Is4() {
		list = a.V4
	}
	i, _ := slices.BinarySearchFunc(list, addr, func(p netip.Prefix, x netip.Addr) int {
		return p.Addr().Compare(x)
	})
	// list[i-1] is the last prefix starting at or before addr (or list[i] equals it).
	if i < len(list) && list[i].Addr() == addr {
		return true
	}
	return i > 0 && list[i-1].Contains(addr)
}

// Port is a transport port the kernel layers protect.
type Port struct {
	Proto string // "tcp" or "udp"
	Num   uint16
}

// Policy is one compiled, immutable generation of everything gatehouse
// enforces. Components receive a *Policy and must not modify it.
type Policy struct {
	Generation  uint64
	Interface   string
	StateDir    string
	Enforcement Enforcement
	Admitted    Admitted
	Tenants     []Tenant
	Listeners   []Listener
	TLS         TLS
}

// ProtectedPorts returns the listeners' ports, sorted and without repeats.
// Every listener is TCP.
func (p *Policy) ProtectedPorts() []Port {
	var ports []Port
	for _, l := range p.Listeners {
		ports = append(ports, Port{Proto: "tcp", Num: l.Port})
	}
	slices.SortFunc(ports, func(a, b Port) int {
		if a.Proto != b.Proto {
			if a.Proto < b.Proto {
				return -1
			}
			return 1
		}
		return int(a.Num) - int(b.Num)
	})
	return slices.Compact(ports)
}

// Errors returned by Validate.
var (
	ErrNotCanonical = errors.New("prefix has host bits set")
	ErrNotSorted    = errors.New("admitted prefixes are not sorted and disjoint")
	ErrWrongFamily  = errors.New("prefix of the wrong address family")
)

// Validate checks the invariants the kernel layers rely on: admitted lists
// canonical, of their family, sorted and disjoint. It does not re-check what
// the config loader already proved (names, routes, files).
func (p *Policy) Validate() error {
	var errs []error
	check := func(name string, list []netip.Prefix, want4 bool) {
		for i, pr := range list {
			if !pr.IsValid() || pr.Addr().Is4() != want4 || pr.Addr().Is4In6() {
				errs = append(errs, fmt.Errorf("admitted.%s[%d] %s: %w", name, i, pr, ErrWrongFamily))
				continue
			}
			if pr.Masked() != pr {
				errs = append(errs, fmt.Errorf("admitted.%s[%d] %s: %w", name, i, pr, ErrNotCanonical))
			}
			if i > 0 && !lastBefore(list[i-1], pr) {
				errs = append(errs, fmt.Errorf("admitted.%s[%d] %s after %s: %w", name, i, pr, list[i-1], ErrNotSorted))
			}
		}
	}
	check("v4", p.Admitted.V4, true)
	check("v6", p.Admitted.V6, false)
	return errors.Join(errs...)
}

// lastBefore reports whether a ends before b begins.
func lastBefore(a, b netip.Prefix) bool {
	return LastAddr(a).Less(b.Addr())
}

// LastAddr returns the highest address inside p.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		switch {
		case bits >= 8:
			bits -= 8
		case bits > 0:
			b[i] |= 0xff >> bits
			bits = 0
		default:
			b[i] = 0xff
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
