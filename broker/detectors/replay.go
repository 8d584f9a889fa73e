package detectors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// ReplayName names the replay detector (signals.detectors.replay, source
// detector:replay).
const ReplayName = "replay"

// ReplayConfig is signals.detectors.replay: an attestation presented
// again after its jti was used (the attestation verifier refuses it, for
// issuers with require_jti), or an attestation from a lineage that was
// revoked on purpose (by a signal whose subject is the lineage and whose
// action revokes, or by an operator revoking the lineage) presented
// within Remember of that revocation, to mint, renew or redeem.
//
// The revoked lineages are kept in memory; at start valet reads those of
// the signals received within Remember (at most the latest
// maxSignalsRead signals). An operator's revocation of a lineage is not a
// signal: it is remembered until valet restarts.
type ReplayConfig struct {
	Common `yaml:",inline"`
	// Remember is how long a revoked lineage counts as revoked (default
	// 24h; 0: only jti replays fire).
	Remember config.Duration `yaml:"remember"`
}

// SetDefaults sets severity high and remember 24h.
func (c *ReplayConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityHigh)
	c.Remember = config.Duration(24 * time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *ReplayConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain ReplayConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *ReplayConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	return errors.Join(append(errs, notNegative(field+".remember", c.Remember, "0 remembers no revoked lineage"))...)
}

// maxSignalsRead bounds the signals the replay detector reads at start.
const maxSignalsRead = 100_000

// replay is the replay detector.
type replay struct {
	cfg ReplayConfig
	// revoked are the revoked lineages, by lineage id; nRevoked counts
	// the revocations ever added, so that a mint skips the lookups while
	// there is none.
	revoked  *table[revocation]
	nRevoked atomic.Int64
	// fired is when the detector last fired for each agent.
	fired *table[time.Time]
}

// revocation is a lineage's revocation: when and by whom.
type revocation struct {
	at time.Time
	by string
}

func newReplay(cfg ReplayConfig, max int) *replay {
	return &replay{cfg: cfg, revoked: newTable[revocation](max), fired: newTable[time.Time](max)}
}

func (d *replay) Name() string                { return ReplayName }
func (d *replay) Policy() broker.SignalPolicy { return d.cfg.policy() }

// load reads the lineages revoked by the signals received within
// Remember before now.
func (d *replay) load(ctx context.Context, ss SignalLister, now time.Time) error {
	if ss == nil || d.cfg.Remember == 0 {
		return nil
	}
	since := now.Add(-d.cfg.Remember.D())
	var found []*agents.Signal
	f := agents.SignalFilter{Limit: loadPage}
	for read := 0; read < maxSignalsRead; {
		page, err := ss.ListSignals(ctx, f)
		if err != nil {
			return err
		}
		read += len(page)
		old := false
		for _, s := range page {
			if s.ReceivedAt.Before(since) {
				old = true
				break
			}
			if s.Subject.Kind == agents.SubjectLineage && s.Action.Revokes() {
				found = append(found, s)
			}
		}
		if old || len(page) < f.Limit {
			break
		}
		f.Before = page[len(page)-1].ID
	}
	for _, s := range slices.Backward(found) { // the oldest first: the newest are evicted last
		d.revoke(s.Subject.ID, s.ReceivedAt, "signal "+s.ID+" from "+s.Source.String())
	}
	return nil
}

func (d *replay) revoke(lineage string, t time.Time, by string) {
	d.revoked.put(lineage, revocation{at: t, by: by})
	d.nRevoked.Add(1)
}

// Observe learns revoked lineages (ObserveLineageRevoked), fires for a
// replayed attestation (ObserveReplay), and for an attestation presented
// to mint, renew or redeem (ObserveMint, ObserveRenew, ObserveDenied)
// whose lineage was revoked within Remember.
func (d *replay) Observe(o broker.Observation) []broker.Detection {
	switch o.Kind {
	case broker.ObserveLineageRevoked:
		if d.cfg.Remember > 0 {
			d.revoke(o.LineageID, o.Time, o.Reason)
		}
		return nil
	case broker.ObserveReplay:
		if !d.cool(o) {
			return nil
		}
		return d.cfg.detection(agent(o.AgentID),
			fmt.Sprintf("an attestation of agent %s was presented again after its jti was used (lineage %s)", o.AgentID, jtiLineage(o.Lineage)),
			map[string]string{"pattern": "jti_replay", "lineage": clip(jtiLineage(o.Lineage), 512), "source_ip": o.SourceIP})
	case broker.ObserveMint, broker.ObserveRenew, broker.ObserveDenied:
		if d.nRevoked.Load() == 0 || o.Lineage == (broker.Lineage{}) {
			return nil
		}
		for _, id := range o.Lineage.IDs() {
			r, ok := d.revoked.lookup(id)
			if !ok || o.Time.Sub(r.at) >= d.cfg.Remember.D() || o.Time.Before(r.at) {
				continue
			}
			if !d.cool(o) {
				return nil
			}
			return d.cfg.detection(agent(o.AgentID),
				fmt.Sprintf("agent %s presented an attestation of lineage %s, revoked at %s by %s", o.AgentID, id, at(r.at), r.by),
				map[string]string{"pattern": "revoked_lineage", "lineage": clip(id, 512), "revoked_at": at(r.at), "revoked_by": clip(r.by, 256),
					"request": o.Kind, "role": o.Role, "lease_id": o.LeaseID})
		}
	}
	return nil
}

// cool reports whether the detector may fire for o's agent now, and if
// so records that it does.
func (d *replay) cool(o broker.Observation) bool {
	fired, _, mu := d.fired.get(o.AgentID)
	defer mu.Unlock()
	if !d.cfg.cool(*fired, o.Time) {
		return false
	}
	*fired = o.Time
	return true
}

// jtiLineage is the lineage id naming the attestation itself.
func jtiLineage(l broker.Lineage) string {
	for _, id := range l.IDs() {
		if strings.HasPrefix(id, "jti:") {
			return id
		}
	}
	return "unknown"
}
