package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Limits is the limits section, and the shape of its overrides under
// listeners[].limits and tenants[].limits: a key left out (nil) inherits.
// The embedded default sets every key of the section.
type Limits struct {
	Connections           *int           `mapstructure:"connections"`
	PreHandshake          *int           `mapstructure:"pre_handshake"`
	PreHandshakePerSource *int           `mapstructure:"pre_handshake_per_source"`
	HandshakeTimeout      *time.Duration `mapstructure:"handshake_timeout"`
	DrainTimeout          *time.Duration `mapstructure:"drain_timeout"`
	ConnectionsPerTenant  *int           `mapstructure:"connections_per_tenant"`
	HTTP                  HTTPLimits     `mapstructure:"http"`
	TCP                   StreamLimits   `mapstructure:"tcp"`
	Telnet                TelnetLimits   `mapstructure:"telnet"`
}

// HTTPLimits are the limits of https and soap listeners.
type HTTPLimits struct {
	InFlightPerTenant *int           `mapstructure:"in_flight_per_tenant"`
	MaxHeaderSize     *ByteSize      `mapstructure:"max_header_size"`
	MaxBodySize       *ByteSize      `mapstructure:"max_body_size"`
	BodyBufferSize    *ByteSize      `mapstructure:"body_buffer_size"`
	BodyBufferTotal   *ByteSize      `mapstructure:"body_buffer_total"`
	BodyBufferTimeout *time.Duration `mapstructure:"body_buffer_timeout"`
	ReadHeaderTimeout *time.Duration `mapstructure:"read_header_timeout"`
	IdleTimeout       *time.Duration `mapstructure:"idle_timeout"`
	BodyReadTimeout   *time.Duration `mapstructure:"body_read_timeout"`
	BackendTimeout    *time.Duration `mapstructure:"backend_timeout"`
	Engine            *string        `mapstructure:"engine"`
}

// StreamLimits are the limits of relayed sessions.
type StreamLimits struct {
	IdleTimeout *time.Duration `mapstructure:"idle_timeout"`
	MaxSession  *time.Duration `mapstructure:"max_session"`
}

// TelnetLimits are the limits of tn3270 and tn5250 sessions.
type TelnetLimits struct {
	IdleTimeout       *time.Duration `mapstructure:"idle_timeout"`
	MaxSession        *time.Duration `mapstructure:"max_session"`
	SessionsPerTenant *int           `mapstructure:"sessions_per_tenant"`
}

// listenerWide are the keys decided before a client proves its tenant
// (or, for the HTTP server's own settings, once per listener): a tenant
// cannot override them.
var listenerWide = []string{
	"connections", "pre_handshake", "pre_handshake_per_source", "handshake_timeout", "drain_timeout",
	"http.max_header_size", "http.read_header_timeout", "http.idle_timeout", "http.body_buffer_total",
	"http.engine",
}

// merge returns base with every key that over sets replaced.
func (base Limits) merge(over Limits) Limits {
	out := base
	mergeStruct(reflect.ValueOf(&out).Elem(), reflect.ValueOf(over))
	return out
}

func mergeStruct(dst, src reflect.Value) {
	for i := range dst.NumField() {
		d, s := dst.Field(i), src.Field(i)
		switch {
		case d.Kind() == reflect.Struct:
			mergeStruct(d, s)
		case !s.IsNil():
			d.Set(s)
		}
	}
}

// setKeys lists the keys an override sets, as dotted paths below limits.
func (l Limits) setKeys() []string {
	var keys []string
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		for i := range v.NumField() {
			f, name := v.Field(i), v.Type().Field(i).Tag.Get("mapstructure")
			switch {
			case f.Kind() == reflect.Struct:
				walk(prefix+name+".", f)
			case !f.IsNil():
				keys = append(keys, prefix+name)
			}
		}
	}
	walk("", reflect.ValueOf(l))
	return keys
}

// validateLimits checks the defaults, every listener's limits resolved
// over them and every tenant's over those, each problem at the key the
// admin wrote.
func (cfg *Config) validateLimits(c *checker) {
	if missing := unsetKeys(cfg.Limits); len(missing) > 0 {
		// Only a broken embedded default gets here: every key has a value.
		c.add("limits", "no value for %s", strings.Join(missing, ", "))
		return
	}
	checkLimits(c, "limits", cfg.Limits, nil, "")
	for i, t := range cfg.Tenants {
		for _, k := range t.Limits.setKeys() {
			if slices.Contains(listenerWide, k) {
				c.add(fmt.Sprintf("tenants[%d].limits.%s", i, k), "is decided before a client proves its tenant: set it under limits or listeners[].limits")
			}
		}
	}
	for i, l := range cfg.Listeners {
		p := fmt.Sprintf("listeners[%d].limits", i)
		proto := policy.Protocol(l.Protocol)
		for _, k := range l.Limits.setKeys() {
			if group, _, ok := strings.Cut(k, "."); ok && !limitGroupApplies(group, proto) {
				c.add(p+"."+k, "does not apply to a %s listener", l.Protocol)
			}
		}
		lim := cfg.Limits.merge(l.Limits)
		if keys := l.Limits.setKeys(); len(keys) > 0 {
			checkLimits(c, p, lim, keys, "")
		}
		for j, t := range cfg.Tenants {
			if keys := t.Limits.setKeys(); len(keys) > 0 && routesTenant(l, t.ID) {
				checkLimits(c, fmt.Sprintf("tenants[%d].limits", j), lim.merge(t.Limits), keys, " (on listener "+l.Name+")")
			}
		}
	}
}

// limitGroupApplies reports whether a group of limits (http, tcp, telnet)
// means anything on a listener of proto. tcp limits bound upgraded HTTP
// connections too.
func limitGroupApplies(group string, proto policy.Protocol) bool {
	httpish := proto == policy.ProtoHTTPS || proto == policy.ProtoSOAP
	switch group {
	case "http":
		return httpish
	case "tcp":
		return httpish || proto == policy.ProtoTCP
	case "telnet":
		return proto.Telnet()
	}
	return true
}

func routesTenant(l Listener, tenant string) bool {
	return slices.ContainsFunc(l.Routes, func(r Route) bool { return r.Tenant == tenant })
}

// unsetKeys lists the keys of l without a value.
func unsetKeys(l Limits) []string {
	all := Limits{}.allKeys()
	set := l.setKeys()
	var out []string
	for _, k := range all {
		if !slices.Contains(set, k) {
			out = append(out, k)
		}
	}
	return out
}

// allKeys lists every key of the limits section.
func (Limits) allKeys() []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name := f.Tag.Get("mapstructure")
			if f.Type.Kind() == reflect.Struct {
				walk(prefix+name+".", f.Type)
				continue
			}
			keys = append(keys, prefix+name)
		}
	}
	walk("", reflect.TypeFor[Limits]())
	return keys
}

// checkLimits validates one resolved set of limits. p is the key path of
// the section; only problems that involve a key of scope are reported
// (nil: every key), at the first such key, so an override is blamed only
// for what it set and the defaults' problems are not repeated for every
// listener. where names the listener a tenant's override was resolved on.
func checkLimits(c *checker, p string, l Limits, scope []string, where string) {
	add := func(keys []string, format string, args ...any) {
		for _, k := range keys {
			if scope == nil || slices.Contains(scope, k) {
				c.addOnce(p+"."+k, format+where, args...)
				return
			}
		}
	}
	atLeast1 := func(key string, v int) {
		if v < 1 {
			add([]string{key}, "must be at least 1, got %d", v)
		}
	}
	atLeast1("connections", *l.Connections)
	atLeast1("pre_handshake", *l.PreHandshake)
	atLeast1("pre_handshake_per_source", *l.PreHandshakePerSource)
	atLeast1("connections_per_tenant", *l.ConnectionsPerTenant)
	atLeast1("http.in_flight_per_tenant", *l.HTTP.InFlightPerTenant)
	atLeast1("telnet.sessions_per_tenant", *l.Telnet.SessionsPerTenant)
	if *l.PreHandshake >= *l.Connections {
		add([]string{"pre_handshake", "connections"}, "pre_handshake (%d) must be below connections (%d), so that connections which have proved nothing can never take every slot",
			*l.PreHandshake, *l.Connections)
	}
	positive := func(key string, d time.Duration) {
		if d < time.Second {
			add([]string{key}, "must be at least 1s, got %s", d)
		}
	}
	positive("handshake_timeout", *l.HandshakeTimeout)
	positive("http.read_header_timeout", *l.HTTP.ReadHeaderTimeout)
	positive("http.idle_timeout", *l.HTTP.IdleTimeout)
	positive("http.body_read_timeout", *l.HTTP.BodyReadTimeout)
	positive("http.backend_timeout", *l.HTTP.BackendTimeout)
	positive("http.body_buffer_timeout", *l.HTTP.BodyBufferTimeout)
	if *l.DrainTimeout < 0 {
		add([]string{"drain_timeout"}, "must not be negative, got %s", *l.DrainTimeout)
	}
	offOrPositive := func(key string, d time.Duration) {
		if d != 0 && d < time.Second {
			add([]string{key}, "must be 0 (no limit) or at least 1s, got %s", d)
		}
	}
	offOrPositive("tcp.idle_timeout", *l.TCP.IdleTimeout)
	offOrPositive("tcp.max_session", *l.TCP.MaxSession)
	offOrPositive("telnet.idle_timeout", *l.Telnet.IdleTimeout)
	offOrPositive("telnet.max_session", *l.Telnet.MaxSession)
	if h := *l.HTTP.MaxHeaderSize; h < 4<<10 || h > 1<<20 {
		add([]string{"http.max_header_size"}, "must be between 4KiB and 1MiB, got %s", h)
	}
	if e := *l.HTTP.Engine; e != "std" && e != "fast" {
		add([]string{"http.engine"}, "must be std or fast, got %q", e)
	}
	if b := *l.HTTP.MaxBodySize; b < 1 {
		add([]string{"http.max_body_size"}, "must be at least 1B, got %s", b)
	}
	if b := *l.HTTP.BodyBufferSize; b < 0 || b > *l.HTTP.MaxBodySize {
		add([]string{"http.body_buffer_size", "http.max_body_size"}, "body_buffer_size (%s) must be between 0B (stream every body) and max_body_size (%s)",
			b, *l.HTTP.MaxBodySize)
	}
	if total, b := *l.HTTP.BodyBufferTotal, *l.HTTP.BodyBufferSize; total < minBodyBufferTotal || total < 2*b {
		add([]string{"http.body_buffer_total", "http.body_buffer_size"}, "body_buffer_total (%s) must hold at least two bodies of body_buffer_size (%s) and two SOAP envelopes, and at least %s",
			total, b, ByteSize(minBodyBufferTotal))
	}
}

// minBodyBufferTotal is the smallest http.body_buffer_total: two SOAP
// envelopes of the inspector's 4 MiB.
const minBodyBufferTotal = 8 << 20

// compileLimits resolves the limits of every listener, and of every tenant
// that overrides some of them on a listener that routes it.
func (cfg *Config) compileLimits(l Listener) (policy.Limits, map[string]policy.Limits) {
	lim := cfg.Limits.merge(l.Limits)
	var perTenant map[string]policy.Limits
	for _, t := range cfg.Tenants {
		if len(t.Limits.setKeys()) == 0 || !routesTenant(l, t.ID) {
			continue
		}
		if perTenant == nil {
			perTenant = map[string]policy.Limits{}
		}
		perTenant[t.ID] = lim.merge(t.Limits).policy()
	}
	return lim.policy(), perTenant
}

// policy converts complete limits; validation has proved every key set.
func (l Limits) policy() policy.Limits {
	return policy.Limits{
		MaxConns:                 *l.Connections,
		MaxPreHandshake:          *l.PreHandshake,
		MaxPreHandshakePerSource: *l.PreHandshakePerSource,
		HandshakeTimeout:         *l.HandshakeTimeout,
		DrainTimeout:             *l.DrainTimeout,
		MaxConnsPerTenant:        *l.ConnectionsPerTenant,
		HTTP: policy.HTTPLimits{
			MaxInFlight:       *l.HTTP.InFlightPerTenant,
			MaxHeaderBytes:    int(*l.HTTP.MaxHeaderSize),
			MaxBodyBytes:      int64(*l.HTTP.MaxBodySize),
			BodyBufferBytes:   int64(*l.HTTP.BodyBufferSize),
			BodyBufferTotal:   int64(*l.HTTP.BodyBufferTotal),
			BodyBufferTimeout: *l.HTTP.BodyBufferTimeout,
			ReadHeaderTimeout: *l.HTTP.ReadHeaderTimeout,
			IdleTimeout:       *l.HTTP.IdleTimeout,
			BodyReadTimeout:   *l.HTTP.BodyReadTimeout,
			BackendTimeout:    *l.HTTP.BackendTimeout,
			Engine:            *l.HTTP.Engine,
		},
		TCP: policy.StreamLimits{IdleTimeout: *l.TCP.IdleTimeout, MaxSession: *l.TCP.MaxSession},
		Telnet: policy.TelnetLimits{
			StreamLimits:         policy.StreamLimits{IdleTimeout: *l.Telnet.IdleTimeout, MaxSession: *l.Telnet.MaxSession},
			MaxSessionsPerTenant: *l.Telnet.SessionsPerTenant,
		},
	}
}
