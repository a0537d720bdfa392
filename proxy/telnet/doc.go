// Package telnet carries TN3270, TN3270E, TN5250 and TNVIP (RFC 1921, Bull
// VIP terminals) sessions from a TLS-terminated client connection to one
// tenant's internal host, policing the Telnet negotiation on the way.
// Everything the policy does not look at
// (the data stream, EOR records, NOP and TIMING-MARK keepalives, ATTN and
// SYSREQ, FUNCTIONS lists, other NEW-ENVIRON variables) passes byte for
// byte. The routes it is given are those policy.CheckListeners passed
// (one per tenant, with the settings of the listener's protocol); the
// client is the certs.Peer its caller identified.
//
// A streaming Parser splits either direction into data runs, commands,
// option negotiations and sub-negotiations without ever assuming that one
// read holds one command. A session caps the negotiations and the time
// before the data phase (the host's first data after the terminal was
// accepted), the client's negotiations and commands but EOR, NOP and GA
// after it (a storm ends the session with result limit), and the wire length of any sub-negotiation; idle
// time, session length and sessions per tenant come from the policy per
// tenant (Config.Limits), and a reload re-arms open sessions
// (Sessions.Rearm).
//
// The policy of a route, fail closed:
//   - Client data never reaches the host before the terminal was accepted,
//     nor do the client's Telnet commands or sub-negotiations, but for the
//     ones the terminal is checked by (TERMINAL-TYPE IS, DEVICE-TYPE
//     REQUEST, and on tn5250 the NEW-ENVIRON answer naming the device,
//     rebuilt of the device variables alone). A tn3270 or tnvip NEW-ENVIRON
//     IS sent before is answered to the host as an empty list.
//   - TERMINAL-TYPE IS: the type must match TerminalTypes (on tnvip without
//     them, a VIP model: policy.VIPModel); on tn3270 an LU
//     in the RFC 1646 "type@LU" form must match LUNames, and a route that
//     restricts LUs refuses a type without one. Refusal ends the session.
//   - TN3270E DEVICE-TYPE REQUEST: a type or CONNECT/ASSOCIATE name outside
//     the route is answered by the proxy with DEVICE-TYPE REJECT
//     (INV-DEVICE-TYPE, INV-DEVICE-NAME, INV-ASSOCIATE) and never reaches
//     the host; clients then retry or fall back to TERMINAL-TYPE, which is
//     checked again. The host's DEVICE-TYPE IS must name an allowed LU, so
//     a generic request cannot land outside the route either.
//   - ForceLU replaces the LU of every request (TERMINAL-TYPE and
//     DEVICE-TYPE REQUEST) and the host must confirm it.
//   - TN5250 NEW-ENVIRON (RFC 4777, ESC-escaped binary values): an IS
//     reaches the host only as the one answer to its SEND, an INFO only
//     after the terminal type was accepted. DEVNAME and IBMASSOCPRT must
//     match DevNames (DEVNAME is required, and may not be empty, when
//     DevNames is set); IBMRSEED has zero or eight bytes; a variable the
//     policy knows appears once. RFC 4777 has the host ask for the list
//     before the terminal type and wait for it, so before the terminal type
//     is accepted the host gets a fresh list of the device variables only
//     (envDevice: device name, keyboard, code page, character set, printer
//     attributes); the auto sign-on variables (USER, IBMRSEED, IBMSUBSPW,
//     IBMTICKET, IBMCURLIB, IBMIMENU, IBMPROGRAM) and every other variable
//     are dropped and the host shows its sign-on screen. Afterwards (a host
//     that asks again) the list passes, the sign-on variables only where
//     AllowsAutoSignOn. On LU-restricted tn3270 routes a DEVNAME must be an
//     allowed LU.
//   - START_TLS between client and host is declined by the proxy for the
//     other side: TLS inside the session would blind the policy.
//
// The package knows nothing of listeners or certificates: the caller
// terminates TLS and says who the peer is (Serve), or hands over the raw
// connection of a `starttls: true` listener with its TLS configuration and
// an Admit callback (ServeStartTLS). The session log has a line at start
// and end with tenant, certificate fingerprint, source, LU or device,
// terminal type, bytes each way, duration and end reason; never screen
// contents. Sessions exports gatehouse_telnet_sessions_total.
package telnet
