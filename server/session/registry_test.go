package session

import (
	"testing"

	"undervdi/server/config"
)

func TestHostGroup(t *testing.T) {
	reg, err := NewRegistry([]config.Kiosk{
		{ID: "lobby", Address: "10.0.0.5", Token: "t"},
		{ID: "branch-1", Address: "10.1.0.5", Token: "t", HostGroup: "branch"},
		{ID: "branch-*", Address: "10.1.0.0/24", Token: "t", HostGroup: "branch-pool"},
		{ID: "old", Address: "10.2.0.9", Legacy: true, HostGroup: "branch"},
		{Address: "10.3.0.0/24", Legacy: true, HostGroup: "main"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{
		"lobby": "", "branch-1": "branch", "branch-7": "branch-pool", "old": "branch",
		"legacy-10.3.0.4": "main", "legacy-10.9.0.1": "", "unknown": "",
	} {
		if got := reg.HostGroup(id); got != want {
			t.Errorf("HostGroup(%q) = %q, want %q", id, got, want)
		}
	}
}
