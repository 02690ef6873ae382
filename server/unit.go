// Package server holds what the broker ships beside its code: the systemd
// unit, for the installers (kickstart) that put it on a server.
package server

import _ "embed"

// Unit is vdi-broker.service.
//
//go:embed vdi-broker.service
var Unit string
