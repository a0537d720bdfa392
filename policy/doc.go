// Package policy is gatehouse's pure domain model: tenants, identities,
// listeners, routes and the admitted source ranges, compiled into one immutable
// Policy snapshot that every enforcement layer and proxy reads, and the one
// validation of listeners and routes (Policy.CheckListeners), which the
// configuration reports with key paths and the proxy enforces before it
// applies a generation. It imports the standard library only and knows
// nothing of files, the kernel or the network.
package policy
