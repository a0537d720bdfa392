package telnet

import "github.com/gatehouse-dmz/gatehouse/policy"

// TNVIP (RFC 1921) carries Bull VIP7800-family terminals to GCOS hosts
// over Telnet. The host asks for the terminal type (DO TERMINAL-TYPE, SB
// TERMINAL-TYPE SEND), the client names its VIP model in TERMINAL-TYPE IS,
// and both then negotiate END-OF-RECORD, BINARY and SUPPRESS-GO-AHEAD; VIP
// messages travel as records ended by IAC EOR. There is no LU or device
// variable to police: what a route restricts is the terminal type, which
// decides how the host talks to the session. So a tnvip session runs the
// common session policy (nothing of the client but TERMINAL-TYPE IS
// reaches the host before the type was accepted; a NEW-ENVIRON list sent
// before is answered to the host as an empty one) with the route's
// terminal_types, and without them with the VIP models alone
// (policy.VIPModel): a type with anything appended, or another kind of
// terminal, is refused unless a pattern of the route allows it.

// vipDefault is what a tnvip route without terminal_types allows: the
// VIP models alone. (The other protocols' route keys never reach a tnvip
// route: policy.CheckListeners refuses them.)
var vipDefault = policy.VIPModel
