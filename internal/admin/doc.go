// Package admin decides who may do what on the admin API: principals
// (a unix peer by its credentials, an admin certificate by the identity
// rules), their roles and scopes, the refusal that says why, the
// append-only audit log, and the in-memory tail of the access log that
// viewers read. It serves nothing and changes nothing itself: the daemon
// runs the transports and the actions.
package admin
