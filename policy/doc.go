// Package policy is gatehouse's pure domain model: tenants, identities,
// listeners, routes and the admitted source ranges, compiled into one immutable
// Policy snapshot that every enforcement layer and proxy reads. It imports the
// standard library only and knows nothing of files, the kernel or the network.
package policy
