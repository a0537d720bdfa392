// Package netns builds throwaway Linux network namespaces for tests that touch
// the kernel: each namespace gets a name unique to the test and process, is
// joined to others by veth pairs carrying documentation addresses only, and is
// removed by t.Cleanup together with every process the test started in it,
// even when the test fails or panics. It never changes the machine's own
// namespace, interfaces, routes or firewall. Tests that need root call
// RequirePriv first: it skips without root and fails when
// GATEHOUSE_REQUIRE_PRIV=1.
package netns
