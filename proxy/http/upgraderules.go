package httpproxy

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// Refusals of a request that asks to switch protocols.
const (
	upgradeSOAP      = "bad request: upgrade on a soap listener"
	upgradeH2C       = "bad request: h2c upgrade"
	upgradeNotWS     = "bad request: upgrade other than a WebSocket handshake"
	upgradeNotOnPath = "forbidden: WebSocket not enabled on the route"
)

// upgradeRefusal judges a request that asks to switch protocols (an
// Upgrade header, or upgrade among its Connection options); it returns the
// status and reason of a refusal, or "" for a request that may go on. Once
// a backend answers 101 the connection is a tunnel nothing inspects, so:
//   - never on a soap listener, where the tunnel would carry envelopes
//     past the SOAP rules;
//   - never h2c, which would carry later requests past routing;
//   - on https only an RFC 6455 opening handshake (GET over HTTP/1.1,
//     "Upgrade: websocket" alone, Connection: upgrade, one Sec-WebSocket-Key
//     of 16 bytes, Sec-WebSocket-Version 13, no body), since any other
//     protocol is a stream gatehouse knows nothing of;
//   - and only on a route with websocket: true, since the tunnel leaves the
//     route's path prefix behind.
//
// ReverseProxy in turn takes a 101 only for the protocol asked for.
func (h *Handler) upgradeRefusal(r *http.Request, rt *route) (int, string) {
	ups := r.Header.Values("Upgrade")
	if len(ups) == 0 && !hasToken(r.Header.Values("Connection"), "upgrade") {
		return 0, ""
	}
	switch {
	case h.soap:
		return http.StatusBadRequest, upgradeSOAP
	case hasToken(ups, "h2c"):
		return http.StatusBadRequest, upgradeH2C
	case !isWebSocketHandshake(r):
		return http.StatusBadRequest, upgradeNotWS
	case !rt.websocket:
		return http.StatusForbidden, upgradeNotOnPath
	}
	return 0, ""
}

// isWebSocketHandshake reports an RFC 6455 opening handshake (section 4.1).
func isWebSocketHandshake(r *http.Request) bool {
	ups, vs, keys := r.Header.Values("Upgrade"), r.Header.Values("Sec-WebSocket-Version"), r.Header.Values("Sec-WebSocket-Key")
	if r.Method != http.MethodGet || !r.ProtoAtLeast(1, 1) || r.ProtoMajor != 1 ||
		len(ups) != 1 || !strings.EqualFold(strings.TrimSpace(ups[0]), "websocket") ||
		!hasToken(r.Header.Values("Connection"), "upgrade") ||
		len(vs) != 1 || strings.TrimSpace(vs[0]) != "13" || len(keys) != 1 ||
		r.ContentLength != 0 || len(r.TransferEncoding) != 0 {
		return false
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0]))
	return err == nil && len(key) == 16
}
