package tunnel

import "github.com/prometheus/client_golang/prometheus"

// metrics are one end's series. Labels are bounded by the configuration:
// tenants, the connector's gateways, fixed results and directions.
type metrics struct {
	role       string
	up         *prometheus.GaugeVec
	streams    *prometheus.CounterVec
	activeG    *prometheus.GaugeVec
	byteCount  *prometheus.CounterVec
	reconnects *prometheus.CounterVec
	handshakes *prometheus.CounterVec
}

// Results of gatehouse_tunnel_streams_total.
var streamResults = map[string][]string{
	"gateway":   {"opened", "retried", "refused", "no_tunnel", "tenant_limit", "tunnels_full", "closed", "error"},
	"connector": {"served", "refused", "error"},
}

var directions = map[string][]string{
	"gateway":   {"to_connector", "to_client"},
	"connector": {"to_backend", "to_gateway"},
}

func newMetrics(role string, tenants []string) *metrics {
	m := &metrics{
		role: role,
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_tunnels_up",
			Help: "Connector tunnels up: on a gateway per tenant (peer is the tenant), on a connector per gateway (peer is the gateway's address).",
		}, []string{"role", "peer"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_tunnel_streams_total",
			Help: "Streams (sessions) through the tunnels by result: on a gateway opened, retried (the connector's multiplexer reset it unread, it went to another tunnel), refused (by the connector), no_tunnel, tenant_limit, tunnels_full, closed, error; on a connector served, refused, error.",
		}, []string{"role", "tenant", "result"}),
		activeG: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_tunnel_streams_active",
			Help: "Streams open through the tunnels.",
		}, []string{"role", "tenant"}),
		byteCount: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_tunnel_bytes_total",
			Help: "Payload bytes of the streams, by direction (gateway: to_connector, to_client; connector: to_backend, to_gateway).",
		}, []string{"role", "tenant", "direction"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_tunnel_reconnects_total",
			Help: "Tunnels a connector dialled again after one was lost or failed to come up, per gateway.",
		}, []string{"gateway"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_tunnel_handshakes_total",
			Help: "Tunnel handshakes on a gateway's tunnel port by result: ok, tls (the TLS handshake failed), refused (no connector entry accepts the certificate), busy (too many handshakes at once, or from one source), limit (the tenant has 256 tunnels).",
		}, []string{"result"}),
	}
	for _, t := range tenants {
		for _, r := range streamResults[role] {
			m.streams.WithLabelValues(role, t, r)
		}
		for _, d := range directions[role] {
			m.byteCount.WithLabelValues(role, t, d)
		}
		m.activeG.WithLabelValues(role, t)
		if role == "gateway" {
			m.up.WithLabelValues(role, t)
		}
	}
	if role == "gateway" {
		for _, r := range []string{"ok", "tls", "refused", "busy", "limit"} {
			m.handshakes.WithLabelValues(r)
		}
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	cs := []prometheus.Collector{m.up, m.streams, m.activeG, m.byteCount}
	if m.role == "gateway" {
		return append(cs, m.handshakes)
	}
	return append(cs, m.reconnects)
}

func (m *metrics) tunnelUp(peer string, d float64) { m.up.WithLabelValues(m.role, peer).Add(d) }
func (m *metrics) stream(tenant, result string) {
	m.streams.WithLabelValues(m.role, tenant, result).Inc()
}
func (m *metrics) active(tenant string, d float64) { m.activeG.WithLabelValues(m.role, tenant).Add(d) }
func (m *metrics) handshake(result string)         { m.handshakes.WithLabelValues(result).Inc() }
func (m *metrics) reconnect(gateway string)        { m.reconnects.WithLabelValues(gateway).Inc() }

// byteCounter is a stream's counter of one direction, looked up once when
// the stream opens rather than at each read and write.
func (m *metrics) byteCounter(tenant, dir string) prometheus.Counter {
	return m.byteCount.WithLabelValues(m.role, tenant, dir)
}

// Describe implements prometheus.Collector.
func (g *Gateway) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range g.m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (g *Gateway) Collect(ch chan<- prometheus.Metric) {
	for _, c := range g.m.collectors() {
		c.Collect(ch)
	}
}

// Describe implements prometheus.Collector.
func (c *Connector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c.m.collectors() {
		x.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Connector) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c.m.collectors() {
		x.Collect(ch)
	}
}

var (
	_ prometheus.Collector = (*Gateway)(nil)
	_ prometheus.Collector = (*Connector)(nil)
)
