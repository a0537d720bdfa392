package telnet

// Telnet commands (RFC 854, RFC 885).
const (
	cmdEOR  = 239
	cmdSE   = 240
	cmdNOP  = 241
	cmdGA   = 249
	cmdSB   = 250
	cmdWILL = 251
	cmdWONT = 252
	cmdDO   = 253
	cmdDONT = 254
	cmdIAC  = 255
)

// Telnet options.
const (
	optBinary     = 0
	optTTYPE      = 24 // RFC 1091
	optEOR        = 25 // RFC 885
	optTN3270E    = 40 // RFC 2355
	optNewEnviron = 39 // RFC 1572
	optStartTLS   = 46 // draft-altman-telnet-starttls
)

// Sub-negotiation codes.
const (
	ttypeIS   = 0
	ttypeSEND = 1

	// TN3270E (RFC 2355 section 7.1).
	tnAssociate  = 0
	tnConnect    = 1
	tnDeviceType = 2
	tnIS         = 4
	tnReason     = 5
	tnReject     = 6
	tnRequest    = 7

	// TN3270E reject reasons.
	reasonInvAssociate  = 2
	reasonInvDeviceName = 3 // "INV-NAME" in RFC 2355
	reasonInvDeviceType = 4

	// NEW-ENVIRON (RFC 1572, RFC 4777).
	envIS      = 0
	envSEND    = 1
	envINFO    = 2
	envVAR     = 0
	envVALUE   = 1
	envESC     = 2
	envUSERVAR = 3

	startTLSFollows = 1
)
