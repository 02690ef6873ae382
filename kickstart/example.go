package kickstart

import _ "embed"

// Example is a documented site file: the original's one-server branch.
//
//go:embed examples/branch.toml
var Example string
