package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// Default is the embedded default configuration, with a comment on every key.
//
//go:embed default.yaml
var Default []byte

// DefaultPath is where the daemon looks for its configuration.
const DefaultPath = "/etc/gatehouse/gatehouse.yaml"

// EnvPrefix is the prefix of environment variables that override keys.
const EnvPrefix = "GATEHOUSE"

// Config is the configuration file, decoded strictly. Field tags are the
// YAML keys; docs/design.md outlines the schema.
type Config struct {
	Interface     string        `mapstructure:"interface"`
	StateDir      string        `mapstructure:"state_dir"`
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
	AdminSocket   string        `mapstructure:"admin_socket"`
	Enforcement   Enforcement   `mapstructure:"enforcement"`
	Metrics       Metrics       `mapstructure:"metrics"`
	Feeds         []Feed        `mapstructure:"feeds"`
	StaticRanges  []string      `mapstructure:"static_ranges"`
	Tenants       []Tenant      `mapstructure:"tenants"`
	Listeners     []Listener    `mapstructure:"listeners"`
	Rules         Rules         `mapstructure:"rules"`
	Limits        Limits        `mapstructure:"limits"`
	TLS           TLS           `mapstructure:"tls"`
	Gateway       Gateway       `mapstructure:"gateway"`
	Connector     Connector     `mapstructure:"connector"`
	BGP           BGP           `mapstructure:"bgp"`
	Access        Access        `mapstructure:"access"`
	Fleet         Fleet         `mapstructure:"fleet"`

	sources sources // where keys came from besides the file (node.go)
}

// TLS configures the listeners' TLS beyond their certificates.
type TLS struct {
	CRLStale       string        `mapstructure:"crl_stale"`
	SessionTickets bool          `mapstructure:"session_tickets"`
	TicketRotation time.Duration `mapstructure:"ticket_rotation"`
	TicketKeys     string        `mapstructure:"ticket_keys"`
}

// Enforcement configures the kernel layers.
type Enforcement struct {
	XDP               string       `mapstructure:"xdp"`
	PinDir            string       `mapstructure:"pin_dir"`
	NFTables          bool         `mapstructure:"nftables"`
	Mode              string       `mapstructure:"mode"`
	Management        []Management `mapstructure:"management"`
	ScanBlock         ScanBlock    `mapstructure:"scan_block"`
	NewConnRate       ConnRate     `mapstructure:"new_conn_rate"`
	MaxConnsPerSource uint32       `mapstructure:"max_conns_per_source"`
	SourcePrefix      SourcePrefix `mapstructure:"source_prefix"`
	Forward           bool         `mapstructure:"forward"`
	Privsep           bool         `mapstructure:"privsep"`
	Workers           int          `mapstructure:"workers"`
	WorkerUser        string       `mapstructure:"worker_user"`
}

// MaxWorkers caps enforcement.workers.
const MaxWorkers = 64

// WorkerCount is how many proxy workers run: enforcement.workers, or with
// 0 the number of CPUs, at most MaxWorkers.
func (e Enforcement) WorkerCount(cpus int) int {
	n := e.Workers
	if n == 0 {
		n = cpus
	}
	return max(1, min(n, MaxWorkers))
}

// SourcePrefix is how many leading bits of a source address count as one
// source for the per-source limits.
type SourcePrefix struct {
	V4 int `mapstructure:"v4"`
	V6 int `mapstructure:"v6"`
}

// Management is a range allowed to the appliance's own ports.
type Management struct {
	CIDR  string   `mapstructure:"cidr"`
	Ports []uint16 `mapstructure:"ports"`
}

// ScanBlock configures port-scan detection.
type ScanBlock struct {
	DistinctPorts int           `mapstructure:"distinct_ports"`
	Window        time.Duration `mapstructure:"window"`
	BlockFor      time.Duration `mapstructure:"block_for"`
}

// ConnRate limits new connections per source.
type ConnRate struct {
	PerSource string `mapstructure:"per_source"`
	Burst     uint32 `mapstructure:"burst"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string `mapstructure:"listen"`
}

// Feed is one signed range feed.
type Feed struct {
	Name         string              `mapstructure:"name"`
	Source       string              `mapstructure:"source"`
	Format       string              `mapstructure:"format"`
	Select       map[string][]string `mapstructure:"select"`
	MinisignKeys []string            `mapstructure:"minisign_keys"`
	Threshold    int                 `mapstructure:"threshold"`
	Refresh      time.Duration       `mapstructure:"refresh"`
	MaxShrink    *float64            `mapstructure:"max_shrink"` // nil: the default
	MaxGrow      *float64            `mapstructure:"max_grow"`
	CA           string              `mapstructure:"ca"`
}

// Tenant is a customer proven by its client certificate.
type Tenant struct {
	ID            string     `mapstructure:"id"`
	ClientCA      string     `mapstructure:"client_ca"`
	Intermediates string     `mapstructure:"intermediates"`
	CRL           string     `mapstructure:"crl"`
	Identities    Identities `mapstructure:"identities"`
	// Environments split the tenant's certificates and routes; none is
	// one implicit environment, "default".
	Environments []Environment `mapstructure:"environments"`
	Limits       Limits        `mapstructure:"limits"`
}

// Environment is one named work area of a tenant, with the identities
// that put a certificate of the tenant in it.
type Environment struct {
	Name       string     `mapstructure:"name"`
	Identities Identities `mapstructure:"identities"`
}

// Identities narrow which certificates of the tenant's CA count.
type Identities struct {
	URISAN             []string `mapstructure:"uri_san"`
	DNSSAN             []string `mapstructure:"dns_san"`
	CN                 []string `mapstructure:"cn"`
	OU                 []string `mapstructure:"ou"`
	FingerprintsSHA256 []string `mapstructure:"fingerprints_sha256"`
	SPKISHA256         []string `mapstructure:"spki_sha256"`
}

// Listener is a TLS endpoint.
type Listener struct {
	Name       string    `mapstructure:"name"`
	Listen     string    `mapstructure:"listen"`
	Protocol   string    `mapstructure:"protocol"`
	ServerCert string    `mapstructure:"server_cert"`
	ServerKey  string    `mapstructure:"server_key"`
	ExtraCerts []CertKey `mapstructure:"extra_certs"`
	StartTLS   bool      `mapstructure:"starttls"`
	Routes     []Route   `mapstructure:"routes"`
	Limits     Limits    `mapstructure:"limits"`
}

// CertKey is a further server certificate, chosen by SNI.
type CertKey struct {
	Cert string `mapstructure:"cert"`
	Key  string `mapstructure:"key"`
}

// Route carries one tenant's traffic to one backend.
type Route struct {
	Tenant           string        `mapstructure:"tenant"`
	Environment      string        `mapstructure:"environment"`
	Host             string        `mapstructure:"host"`
	Path             string        `mapstructure:"path"`
	Backend          string        `mapstructure:"backend"`
	Backends         []string      `mapstructure:"backends"`
	HealthPath       string        `mapstructure:"health_path"`
	HealthInterval   time.Duration `mapstructure:"health_interval"`
	BackendCA        string        `mapstructure:"backend_ca"`
	BackendCert      string        `mapstructure:"backend_cert"`
	BackendKey       string        `mapstructure:"backend_key"`
	BackendTLS       bool          `mapstructure:"backend_tls"`
	SOAPActions      []string      `mapstructure:"soap_actions"`
	AllowWSDL        bool          `mapstructure:"allow_wsdl"`
	PathParams       bool          `mapstructure:"path_params"`
	WebSocket        bool          `mapstructure:"websocket"`
	LUNames          []string      `mapstructure:"lu_names"`
	TerminalTypes    []string      `mapstructure:"terminal_types"`
	ForceLU          string        `mapstructure:"force_lu"`
	DevNames         []string      `mapstructure:"devnames"`
	RefuseAutoSignOn *bool         `mapstructure:"refuse_auto_sign_on"` // unset: true on tn5250
}

// Rules configures the feed guards.
type Rules struct {
	MinPrefix      MinPrefix `mapstructure:"min_prefix"`
	ReservedExempt []string  `mapstructure:"reserved_exempt"`
	// BroadStaticRanges lets static_ranges hold prefixes shorter than
	// min_prefix (a /0 admits the whole Internet).
	BroadStaticRanges bool `mapstructure:"broad_static_ranges"`
}

// MinPrefix is the shortest prefix a feed may carry, per family.
type MinPrefix struct {
	V4 int `mapstructure:"v4"`
	V6 int `mapstructure:"v6"`
}

// Problems is every problem found in a configuration, each with its key path.
type Problems []Problem

// Problem is one configuration error at one key path.
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Msg
	}
	return p.Path + ": " + p.Msg
}

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// ErrInvalid is wrapped by every error Load returns for a bad configuration.
var ErrInvalid = errors.New("invalid configuration")

// Load reads the file at path over the embedded default, applies GATEHOUSE_…
// environment overrides from env (nil: the process environment), decodes it
// strictly and validates it. A returned error lists every problem found.
func Load(path string, env func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path, env)
}

// Parse is Load for configuration bytes; name is used in messages.
func Parse(data []byte, name string, env func(string) (string, bool)) (*Config, error) {
	return decode(data, name, env, true)
}

// Peek reads the file at path like Load but does not validate it: for
// commands that need one key (the admin socket, the pin directory) even
// while a certificate the configuration names is missing. Unknown keys and
// values of the wrong type are still errors.
func Peek(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return decode(data, path, nil, false)
}

// Defaults is the embedded default configuration, unvalidated.
func Defaults() *Config {
	c, err := decode([]byte("{}"), "default", func(string) (string, bool) { return "", false }, false)
	if err != nil {
		panic("embedded default config: " + err.Error())
	}
	return c
}

func decode(data []byte, name string, env func(string) (string, bool), validate bool) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	v := viper.NewWithOptions(viper.EnvKeyReplacer(strings.NewReplacer(".", "_")))
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(Default)); err != nil {
		return nil, fmt.Errorf("embedded default config: %w", err)
	}
	// Decode the user's file on its own first, so that an unknown key is
	// reported against what the admin wrote, not against the merged tree.
	user := viper.New()
	user.SetConfigType("yaml")
	if err := user.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", name, ErrInvalid, err)
	}
	var problems Problems
	unknownKeys("", user.AllSettings(), reflect.TypeFor[Config](), &problems)
	if err := v.MergeConfigMap(user.AllSettings()); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", name, ErrInvalid, err)
	}
	var src sources
	problems = append(problems, applyNode(v, env, &src)...)
	envProblems := applyEnv(v, env)
	problems = append(problems, envProblems...)
	src.env = envKeys(v, env)
	src.merged = v.AllSettings()

	var c Config
	c.sources = src
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:     &c,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(durationHook, byteSizeHook),
	})
	if err != nil {
		return nil, err
	}
	// Unknown keys do not stop validation, so that every problem is listed at
	// once; a value of the wrong type does, as the struct is then incomplete.
	if err := dec.Decode(v.AllSettings()); err != nil {
		if typeProblems := decodeProblems(err); len(typeProblems) > 0 {
			problems = append(problems, typeProblems...)
		}
	}
	if validate && !hasTypeProblem(problems) {
		problems = append(problems, c.validate()...)
	}
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, fmt.Errorf("%s: %w:\n%w", name, ErrInvalid, problems)
	}
	return &c, nil
}

// applyEnv sets every scalar key for which a GATEHOUSE_… variable exists,
// converted to the key's type as YAML would give it, so that a number, a
// boolean or a float from the environment decodes and validates as it does
// from the file. Lists of strings take comma-separated values; lists of
// tables (tenants, listeners, feeds) cannot be overridden this way.
func applyEnv(v *viper.Viper, env func(string) (string, bool)) Problems {
	var problems Problems
	for _, key := range v.AllKeys() {
		name := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		val, ok := env(name)
		if !ok {
			continue
		}
		if _, isList := v.Get(key).([]any); isList {
			v.Set(key, splitList(val))
			continue
		}
		typed, err := envScalar(val, keyType(reflect.TypeFor[Config](), strings.Split(key, ".")))
		if err != nil {
			problems = append(problems, Problem{key, fmt.Sprintf("%s=%q: %v", name, val, err)})
			continue
		}
		v.Set(key, typed)
	}
	return problems
}

// keyType is the Go type a dotted key decodes into, nil when the schema
// has no such key.
func keyType(t reflect.Type, path []string) reflect.Type {
	for _, name := range path {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		f, ok := fieldByTag(t, name)
		if !ok {
			return nil
		}
		t = f.Type
	}
	return t
}

func fieldByTag(t reflect.Type, tag string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("mapstructure") == tag {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// envScalar converts an environment value to what the YAML parser would
// have produced for a key of type t. Durations and sizes stay strings: the
// decode hooks read their units.
func envScalar(val string, t reflect.Type) (any, error) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case nil:
		return val, nil
	case reflect.TypeFor[time.Duration]():
		if _, err := time.ParseDuration(strings.TrimSpace(val)); err != nil {
			return nil, errors.New(errNotDuration)
		}
		return val, nil // the decode hook reads it as the file's value
	case reflect.TypeFor[ByteSize]():
		if _, err := ParseByteSize(val); err != nil {
			return nil, errors.New("not a size like 512B, 64KiB or 32MiB (binary units)")
		}
		return val, nil
	}
	s := strings.TrimSpace(val)
	switch t.Kind() {
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, errors.New("not a boolean (true or false)")
		}
		return b, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, t.Bits())
		if err != nil {
			return nil, fmt.Errorf("not an integer of %d bits", t.Bits())
		}
		return n, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, t.Bits())
		if err != nil {
			return nil, fmt.Errorf("not an integer from 0 to %d", uint64(1)<<t.Bits()-1)
		}
		return n, nil
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, t.Bits())
		if err != nil {
			return nil, errors.New("not a number")
		}
		return f, nil
	}
	return val, nil
}

func splitList(s string) []any {
	var out []any
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, f)
	}
	return out
}

// unknownKeys walks the raw tree against the struct and reports every key
// the schema does not have, with its full path.
func unknownKeys(path string, raw any, t reflect.Type, problems *Problems) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := raw.(map[string]any)
		if !ok {
			return // a type mismatch; the decoder reports it
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			fields[f.Tag.Get("mapstructure")] = f.Type
		}
		for k, v := range m {
			ft, ok := fields[k]
			if !ok {
				*problems = append(*problems, Problem{join(path, k), "unknown key"})
				continue
			}
			unknownKeys(join(path, k), v, ft, problems)
		}
	case reflect.Slice:
		list, ok := raw.([]any)
		if !ok {
			return
		}
		for i, v := range list {
			unknownKeys(fmt.Sprintf("%s[%d]", path, i), v, t.Elem(), problems)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decodeProblems turns the decoder's joined errors into key-path problems,
// every one of them: the decoder wraps its list once more.
func decodeProblems(err error) Problems {
	var out Problems
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if de, ok := err.(*mapstructure.DecodeError); ok {
			out = append(out, Problem{de.Name(), cleanDecodeMsg(de.Unwrap())})
			return
		}
		if inner := errors.Unwrap(err); inner != nil {
			walk(inner)
			return
		}
		out = append(out, Problem{"", err.Error()})
	}
	walk(err)
	return out
}

func hasTypeProblem(ps Problems) bool {
	for _, p := range ps {
		if p.Msg != "unknown key" {
			return true
		}
	}
	return false
}

func cleanDecodeMsg(err error) string {
	if err == nil {
		return "invalid value"
	}
	return err.Error()
}

// errNotDuration is how a value that is not a duration is refused.
const errNotDuration = "not a duration (use e.g. 30s, 15m, 1h)"

// parseDuration reads a duration and says what was wrong with the value.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s: %q", errNotDuration, s)
	}
	return d, nil
}

// durationHook decodes strings into durations.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeFor[time.Duration]() || from.Kind() != reflect.String {
		return data, nil
	}
	return parseDuration(data.(string))
}

func sortProblems(ps Problems) {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Path < ps[j].Path })
}
