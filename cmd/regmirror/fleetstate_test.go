package main

import (
	"strings"
	"testing"
	"time"
)

// The fleet's settings are checked in multi-replica mode only, each
// problem naming its setting.
func TestValidateFleetState(t *testing.T) {
	ok := Config{PeerTokenFile: "/run/secrets/peer", FleetInterval: time.Minute, FleetGrace: time.Hour}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"a pod's name", func(c *Config) { c.ReplicaName = "regmirror-7d9f8-abcde" }, ""},
		{"a name with a slash", func(c *Config) { c.ReplicaName = "a/b" }, "REGMIRROR_REPLICA_NAME"},
		{"no interval", func(c *Config) { c.FleetInterval = 0 }, "REGMIRROR_FLEET_INTERVAL"},
		{"a grace under three intervals", func(c *Config) { c.FleetGrace = 2 * time.Minute }, "REGMIRROR_FLEET_GRACE"},
		{"one mirror: not checked", func(c *Config) { c.PeerTokenFile, c.FleetGrace = "", 0 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			errs := c.validateFleetState()
			switch {
			case tc.want == "" && len(errs) > 0:
				t.Fatalf("errors %v, want none", errs)
			case tc.want != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want)):
				t.Fatalf("errors %v, want one naming %s", errs, tc.want)
			}
		})
	}
	if opt, err := (Config{ReplicaName: "r1", FleetInterval: time.Minute, FleetGrace: time.Hour}).fleetStore(); err != nil || opt.Replica != "r1" {
		t.Fatalf("fleetStore: %+v, %v", opt, err)
	}
}
