// Package test holds gatehouse's end-to-end tests and architecture checks;
// test/netns builds the throwaway network namespaces they run in.
package test
