// Package certstest builds throwaway PKIs for tests: a CA, server and client
// certificates and CRLs, written as PEM files into the test's temporary
// directory. It depends on the standard library only, so that every package's
// tests (certs, proxy, end-to-end) can use it.
package certstest
