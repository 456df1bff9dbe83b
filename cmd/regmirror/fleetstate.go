package main

import (
	"fmt"
	"os"

	"github.com/regmirror/regmirror/cache"
)

// validateFleetState checks the settings of the shared tags and the fleet's
// budget (multi-replica mode only).
func (c Config) validateFleetState() []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", envPrefix, key, fmt.Sprintf(format, a...)))
	}
	if !c.fleet() {
		return nil
	}
	if c.ReplicaName != "" {
		if err := cache.CheckReplicaName(c.ReplicaName); err != nil {
			bad("REPLICA_NAME", "%v", err)
		}
	}
	if c.FleetInterval <= 0 {
		bad("FLEET_INTERVAL", "must be positive")
	}
	if c.FleetGrace < 3*c.FleetInterval {
		bad("FLEET_GRACE", "%s: must be at least 3 times %sFLEET_INTERVAL (%s): a use reaches the evictor up to an interval late",
			c.FleetGrace, envPrefix, c.FleetInterval)
	}
	return errs
}

// fleetStore is the store's part in multi-replica mode: this replica's name
// in the bucket (the host name, unless set), and the fleet's rhythm.
func (c Config) fleetStore() (*cache.FleetOptions, error) {
	name := c.ReplicaName
	if name == "" {
		host, err := os.Hostname()
		if err != nil || cache.CheckReplicaName(host) != nil {
			return nil, fmt.Errorf("%sREPLICA_NAME: the host name %q cannot name this replica; set it", envPrefix, host)
		}
		name = host
	}
	return &cache.FleetOptions{Replica: name, Interval: c.FleetInterval, Grace: c.FleetGrace}, nil
}
