// Command demo builds the smallest real gatehouse deployment out of network
// namespaces on this machine and shows, with real clients, what gatehouse
// lets through and what it refuses. `make demo` runs it as root.
//
// Topology (documentation addresses only; nothing touches the machine's own
// interfaces, routes or firewall):
//
//	cloud     192.0.2.10  ──┐
//	                        ├── br0 ── outside 192.0.2.1 ┃ dmz ┃ inside 203.0.113.1 ── internal
//	intruder  192.0.2.200 ──┘    (wan)  XDP attached here  ┃ gatehouse run, table inet gatehouse
//
//	internal: 203.0.113.10:8443 HTTPS backend, 203.0.113.20:8080 SOAP service,
//	          203.0.113.30:23 TN3270 host
//
// The cloud's range 192.0.2.0/26 (and 2001:db8:1::/112) reaches gatehouse
// only through a signed feed: static_ranges is empty. The intruder shares
// the wire but not the range.
//
// With --connector (`make demo-connector`) it builds instead a site with no
// inbound port (see connector.go): cloud (tenant client) ── gw (gateway:
// listeners with XDP and nftables, tunnel port 198.51.100.1:443) ── fw
// (nftables: no new flow towards internal, new flows from it to 443 only)
// ── internal (connector, HTTPS backend, SOAP service, TN3270 host). The
// connector dials out; every session goes gateway → tunnel → connector.
//
// With --ha (`make demo-ha`) it builds a fleet instead (see ha.go): cloud
// and intruder ── router (BIRD 2, ECMP) ── three gatehouse nodes that
// announce the service address 203.0.113.100 over BGP while ready; one node
// is killed and another drained while a curl loop goes on.
//
// The program owns everything it creates: namespaces with a random
// "ghdemo-<id>-" prefix, a bpffs mounted under its temporary directory (the
// daemon's enforcement.pin_dir), /etc/netns/<namespace>/hosts files for the
// client namespaces, and the processes it starts. On exit (Ctrl-C, SIGTERM,
// --check finishing, or a failed step) it stops them by PID, runs
// `gatehouse teardown --yes` and removes all of it.
//
// The internal hosts and the intruder's port scan are this same program,
// re-executed with a hidden sub-command inside the right namespace, so the
// demo needs no other binary than gatehouse and the Debian tools it checks
// for at start.
package main
