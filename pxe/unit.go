package pxe

import _ "embed"

// Unit is undervdi-pxe.service, for the installers (kickstart) that put it
// on a server.
//
//go:embed undervdi-pxe.service
var Unit string
