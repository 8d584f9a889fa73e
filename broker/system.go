package broker

import (
	"strconv"

	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the audit records of valet's own events, which no flow
// writes: the policy set being (re)loaded and the server starting.

// systemActor is valet itself, the actor of the records below.
var systemActor = audit.Actor{Type: audit.ActorSystem, ID: "valet"}

// PolicyReloadRecord is the audit record of an attempt to load the policy
// set (policy.Options.OnReload): version is the version in force
// afterwards, err why the new set was refused (nil when it was loaded).
// A refusal is decision deny and keeps the previous set; its reason
// carries err, which names the policy file and line at fault.
func PolicyReloadRecord(version string, err error) audit.Entry {
	e := audit.Entry{Kind: audit.KindPolicyReload, Actor: systemActor, PolicyVersion: version,
		Decision: audit.Allow, Reason: "policy set loaded"}
	if err != nil {
		e.Decision, e.Reason = audit.Deny, "reload refused, previous policy set kept: "+err.Error()
	}
	return e
}

// ServerStartRecord is the audit record of a server start: the policy
// version in force, the SHA-256 of the loaded configuration (hex), how
// many pending leases of an interrupted run were recovered (invariant 3)
// and valet's version.
func ServerStartRecord(policyVersion, configSHA256 string, recoveredPending int, version string) audit.Entry {
	return audit.Entry{Kind: audit.KindServerStart, Actor: systemActor, PolicyVersion: policyVersion,
		Details: map[string]string{"config_sha256": configSHA256, "recovered_pending": strconv.Itoa(recoveredPending), "version": version}}
}
