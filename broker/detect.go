package broker

import (
	"context"
	"time"

	"github.com/valet-broker/valet/broker/agents"
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
)

// Observation is what a flow saw, for the detectors. It carries no
// credential and no attestation.
type Observation struct {
	Kind     string
	Time     time.Time
	AgentID  string
	Role     string
	LeaseID  string
	SourceIP string
	Lineage  Lineage
	// Reason is why a request was denied (ObserveDenied).
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

// observe hands o to every detector and queues what they raise.
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
			_, err := b.RaiseSignal(ctx, d.src, SignalRequest{Subject: d.d.Subject, Severity: d.d.Severity, Reason: d.d.Reason, Action: d.d.Action})
			if err != nil && ctx.Err() == nil {
				b.log.Warn("a detection was not raised", "detector", d.src.Source.Name, "subject", d.d.Subject.String(), "err", err)
			}
		}
	}
}
