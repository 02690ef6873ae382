package broker

import (
	"os"
	"runtime/debug"
)

// GCPercent is the broker's garbage collection target (GOGC). Most of a
// broker's heap is long-lived: a thousand kiosks' connections, their TLS
// state, the pool's table. Go's default (100) lets the heap grow to twice
// that between collections; 50 keeps the peak at one and a half times it,
// about 10 MB less at a thousand kiosks, for collections that are twice as
// frequent in a process that allocates little (docs/benchmarks.md).
const GCPercent = 50

// TuneGC sets GCPercent unless the environment sets GOGC, which wins.
// vdi-broker calls it at start.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(GCPercent)
	}
}
