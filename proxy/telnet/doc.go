// Package telnet carries TN3270, TN3270E and TN5250 sessions from a
// TLS-terminated client connection to one tenant's internal host, policing
// the Telnet negotiation on the way: allowed terminal types, LU names
// (TN3270E DEVICE-TYPE REQUEST and TN3270 TERMINAL-TYPE "type@LU"), a
// forced LU, TN5250 device names and auto-sign-on variables in NEW-ENVIRON
// (RFC 4777). Everything the policy does not look at passes byte for byte.
//
// A streaming Parser splits either direction into data runs, commands,
// option negotiations and sub-negotiations without ever assuming that one
// read holds one command; the session caps the number of negotiations, the
// length of a sub-negotiation and the time to reach the data phase.
//
// The package knows nothing of listeners, certificates or the proxy that
// calls it: the caller terminates TLS (or hands over the raw connection of a
// START_TLS listener together with the TLS configuration and an Admit
// callback) and says who the peer is. It never logs screen contents.
package telnet
