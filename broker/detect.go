package broker

import (
	"context"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
)

// This file holds the seam valet's own detectors plug into: the flows
// report what they observe, each detector looks at it on the spot and
// may answer with detections, and the broker raises those in the
// background through the same pipeline as any other signal (RaiseSignal:
// risk, actions, audit, notifications).

// Observation kinds.
const (
	// ObserveMint is a credential minted (the lease is active).
	ObserveMint = "mint"
	// ObserveDenied is a request of an authenticated agent refused by
	// the policy, an unknown role, a quarantine, or another rule.
	ObserveDenied = "denied"
	// ObserveRenew is a lease renewed: ExpiresAt is its new expiry,
	// RenewedFrom the expiry it had before.
	ObserveRenew = "renew"
	// ObserveReplay is an attestation refused because its jti was used
	// before (a ReplayedAttestation in the Verifier's error). It verified
	// in every other respect, so AgentID and Lineage are its own.
	ObserveReplay = "replay"
	// ObserveEndedUse is a resource server introspecting a valet token
	// whose lease was revoked or released (someone still uses it):
	// LeaseState is how the lease ended (StateRevoked or StateReleased,
	// also while its revocation is under way), EndedAt when.
	ObserveEndedUse = "ended-use"
	// ObserveLineageRevoked is every live lease of a lineage ended on
	// purpose, by a signal whose subject is the lineage or by an
	// operator revoking it: LineageID names it (a leases.Lineage.IDs
	// id), Reason says by whom.
	ObserveLineageRevoked = "lineage-revoked"
)

// Observation is what a flow saw, for the detectors. It carries no
// credential and no attestation. Time is the broker's clock when the flow
// saw it; the fields a kind does not name are empty.
type Observation struct {
	Kind     string
	Time     time.Time
	AgentID  string
	Role     string
	LeaseID  string
	SourceIP string
	// Lineage is the lineage of the attestation presented (mint, denied,
	// renew by the agent, replay) or of the lease (ended-use).
	Lineage Lineage
	// ExpiresAt is the lease's expiry (mint, renew); RenewedFrom its
	// expiry before the renewal.
	ExpiresAt   time.Time
	RenewedFrom time.Time
	// LeaseState and EndedAt are how and when the lease ended
	// (ended-use).
	LeaseState leases.State
	EndedAt    time.Time
	// LineageID is the lineage revoked (lineage-revoked).
	LineageID string
	// Reason is why a request was denied (ObserveDenied), or who revoked
	// a lineage (ObserveLineageRevoked).
	Reason string
}

// Detection is what a detector raises: a signal about a subject.
type Detection struct {
	Subject  agents.Subject
	Severity agents.Severity
	Reason   string
	// Action, when set, is asked for; it must be among the detector's
	// allowed actions. Otherwise the detector's policy and
	// signals.actions decide by severity.
	Action agents.Action
	// Evidence is what the detector saw and the thresholds it applied
	// (counts, times, networks; never a credential), kept on the signal
	// and in its audit record.
	Evidence map[string]string
}

// ReplayedAttestation is in the error chain of every attestation a
// Verifier refuses because its jti was used before. The attestation
// verified in every other respect, so it names its agent and lineage, for
// the detectors; it carries nothing of the token.
type ReplayedAttestation struct {
	AgentID string
	Lineage Lineage
}

// Error says whose attestation was replayed.
func (r *ReplayedAttestation) Error() string {
	return "attestation of agent " + r.AgentID + " was already used (jti replay)"
}

// Detector is one of valet's own detectors.
type Detector interface {
	// Name names the detector in signals, audit records and metrics (a
	// configured name).
	Name() string
	// Policy is what the detector's signals may make valet do.
	Policy() SignalPolicy
	// Observe looks at one observation. It runs on the goroutine of the
	// flow that observed (a mint waits for it), so it must be cheap: no
	// I/O, no blocking, safe for concurrent use; a mint's detectors
	// together should cost a few percent of the mint. It returns the
	// detections the observation raises, usually none.
	Observe(o Observation) []Detection
}

// detectionQueue bounds the detections waiting to be raised. When it is
// full a detection is dropped and logged: a detector must never hold up a
// flow.
const detectionQueue = 1024

// detection is a detector's detection waiting to be raised.
type detection struct {
	src *SignalSource
	d   Detection
}

// observe hands o to every detector and queues what they raise. The
// flows call it only when there are detectors (len(b.detectors) > 0).
func (b *Broker) observe(o Observation) {
	for _, d := range b.detectors {
		for _, det := range d.Observe(o) {
			select {
			case b.detections <- detection{src: DetectorSource(d.Name(), d.Policy()), d: det}:
			default:
				b.log.Error("detection dropped: too many detections wait to be raised", "detector", d.Name(),
					"subject", det.Subject.String(), "severity", det.Severity)
			}
		}
	}
}

// raiseDetections raises queued detections until ctx ends.
func (b *Broker) raiseDetections(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-b.detections:
			_, err := b.RaiseSignal(ctx, d.src, SignalRequest{Subject: d.d.Subject, Severity: d.d.Severity, Reason: d.d.Reason, Action: d.d.Action,
				Evidence: d.d.Evidence})
			if err != nil && ctx.Err() == nil {
				b.log.Warn("a detection was not raised", "detector", d.src.Source.Name, "subject", d.d.Subject.String(), "err", err)
			}
		}
	}
}
