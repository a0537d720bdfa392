// Package daemon is gatehouse's composition root: it builds every component
// from the configuration, applies one policy generation to all of them, runs
// their loops under one errgroup, reloads as build → validate → swap (rolling
// back the layers already updated when a later one refuses), serves the
// metrics endpoint and the admin socket, says whether it is ready (every
// feed backed by a verified release, kernel layers not held on a previous
// run's ranges, the XDP filter attached), and drains on shutdown. While a
// feed has no verified release it holds the kernel layers on the ranges a
// previous run left (hold.go) and gives them each generation with those.
// No other package wires components together.
package daemon
