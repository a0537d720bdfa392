//go:build race

package relay_test

// raceDetector: the race detector inflates heap and stacks, so memory
// bounds are not checked under it.
const raceDetector = true
