package proxy

// SetRefusalLogLimit replaces the rate limit of the refusal lines, so a
// test can see it hold without sending thousands of clients. Call it
// before the first connection.
func SetRefusalLogLimit(s *Server, perSecond float64, burst int) {
	s.refusals = newLogLimiter(perSecond, burst)
}
