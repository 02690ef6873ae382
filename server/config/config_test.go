package config

import (
	"strings"
	"testing"
	"time"
)

func TestExampleParses(t *testing.T) {
	c, err := Parse([]byte(Example))
	if err != nil {
		t.Fatalf("Parse(Example) = %v", err)
	}
	// The example documents the defaults: apart from the golden, it must
	// equal them, or the file lies to its reader.
	want := Default()
	want.Golden = "win10"
	if *c != *want {
		t.Errorf("Parse(Example) = %+v, want defaults %+v", *c, *want)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
golden = "tiny"
pool_size = 4
max_vms = 10
memory_reserve = "512MiB"
ready_timeout = "90s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Golden != "tiny" || c.PoolSize != 4 || c.MaxVMs != 10 {
		t.Errorf("Parse = %+v", c)
	}
	if c.MemoryReserve != 512<<20 {
		t.Errorf("MemoryReserve = %d, want %d", c.MemoryReserve, 512<<20)
	}
	if c.ReadyTimeout.D() != 90*time.Second {
		t.Errorf("ReadyTimeout = %v, want 90s", c.ReadyTimeout)
	}
	if c.LibvirtURI != "qemu:///system" {
		t.Errorf("LibvirtURI default = %q", c.LibvirtURI)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // substrings of the error
	}{
		{`golden = "g"` + "\npool_sise = 3", []string{`unknown key "pool_sise"`}},
		{`golden = "g"` + "\n[gateway]\nport = 1", []string{`unknown key "gateway.port"`}},
		{`pool_size = 2`, []string{"golden: required"}},
		{`golden = "g"` + "\npool_size = 0", []string{"pool_size: 0: must be at least 1"}},
		{`golden = "g"` + "\npool_size = 9", []string{"max_vms: 8: must be at least pool_size (9)"}},
		{`golden = "g"` + "\npool_size = \"four\"", []string{"pool_size", "incompatible types"}},
		{`golden = "g"` + "\nready_timeout = \"5x\"", []string{"ready_timeout", `"5x" is not a duration`}},
		{`golden = "g"` + "\nmemory_reserve = \"1024\"", []string{"memory_reserve", "needs a unit"}},
		{`golden = "g"` + "\nmemory_reserve = \"lots\"", []string{"memory_reserve", "not a size"}},
		{`golden = "g"` + "\noverlay_dir = \"overlays\"", []string{"overlay_dir", "absolute"}},
		{`golden = "g"` + "\npool_name = \"Bad-Name\"", []string{"pool_name", "lowercase"}},
		{`golden = "g"` + "\nlog_level = \"loud\"", []string{"log_level"}},
		{`golden = "g"` + "\nlibvirt_uri = \"nonsense\"", []string{"libvirt_uri"}},
		{`golden = "g` + "\n", []string{"line 1"}},
		// Several problems are reported together.
		{`golden = "g"` + "\npool_size = 0\nfailure_limit = 0", []string{"pool_size", "failure_limit"}},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil {
			t.Errorf("Parse(%q) = nil error, want %q", tc.in, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tc.in, err, w)
			}
		}
	}
}
