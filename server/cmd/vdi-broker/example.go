package main

import (
	"io"

	"undervdi/server/config"
)

func exampleConfig(stdout io.Writer) int {
	io.WriteString(stdout, config.Example)
	return exitOK
}
