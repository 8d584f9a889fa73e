package detectors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// NewRoleName names the new-role detector (signals.detectors.new_role,
// source detector:new_role).
const NewRoleName = "new_role"

// NewRoleConfig is signals.detectors.new_role: an agent mints a role it
// has never minted before, once its learning period is over. The roles
// an agent minted and when valet first saw it come from its agent record
// (read when valet starts) and from the mints since.
type NewRoleConfig struct {
	Common `yaml:",inline"`
	// Learning is how long after valet first saw an agent its new roles
	// are learnt without a signal (default 24h; 0: from its first mint
	// on, every role it had not minted fires).
	Learning config.Duration `yaml:"learning"`
}

// SetDefaults sets severity low and learning 24h.
func (c *NewRoleConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityLow)
	c.Learning = config.Duration(24 * time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *NewRoleConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain NewRoleConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *NewRoleConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	return errors.Join(append(errs, notNegative(field+".learning", c.Learning, "0 learns nothing"))...)
}

// newRole is the new-role detector.
type newRole struct {
	cfg    NewRoleConfig
	agents *table[roleState]
}

// roleState is what the detector knows of one agent.
type roleState struct {
	first time.Time // when valet first saw it
	roles []string  // the roles it minted, sorted
	fired time.Time
}

func newNewRole(cfg NewRoleConfig, max int) *newRole {
	return &newRole{cfg: cfg, agents: newTable[roleState](max)}
}

func (d *newRole) Name() string                { return NewRoleName }
func (d *newRole) Policy() broker.SignalPolicy { return d.cfg.policy() }

// loadPage is how many agent records one read returns.
const loadPage = 1000

// load reads the most recently seen agents' records, as many as the
// detector tracks: when each was first seen and the roles it minted. An
// agent valet never saw authenticate (a quarantine ahead of time) is left
// to its first mint.
func (d *newRole) load(ctx context.Context, as AgentLister) error {
	if as == nil {
		return nil
	}
	var recs []*agents.Agent
	f := agents.Filter{Limit: loadPage}
	for len(recs) < d.agents.max() {
		page, err := as.ListAgents(ctx, f)
		if err != nil {
			return err
		}
		for _, a := range page {
			if !a.FirstSeen.IsZero() && len(recs) < d.agents.max() {
				recs = append(recs, a)
			}
		}
		if len(page) < f.Limit {
			break
		}
		f.Before = page[len(page)-1].Cursor()
	}
	// The least recently seen first, so that the most recent are the
	// last evicted.
	for _, a := range slices.Backward(recs) {
		d.agents.put(a.ID, roleState{first: a.FirstSeen, roles: slices.Clone(a.Roles)})
	}
	return nil
}

// Observe learns the role of a mint (ObserveMint) and fires when the
// agent had not minted it before and was first seen at least Learning
// ago.
func (d *newRole) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveMint {
		return nil
	}
	st, fresh, mu := d.agents.get(o.AgentID)
	defer mu.Unlock()
	if fresh {
		st.first = o.Time
	}
	i, known := slices.BinarySearch(st.roles, o.Role)
	if known {
		return nil
	}
	st.roles = slices.Insert(st.roles, i, o.Role)
	if o.Time.Sub(st.first) < d.cfg.Learning.D() || !d.cfg.cool(st.fired, o.Time) {
		return nil
	}
	st.fired = o.Time
	before := make([]string, 0, len(st.roles)-1)
	before = append(append(before, st.roles[:i]...), st.roles[i+1:]...)
	return d.cfg.detection(agent(o.AgentID),
		fmt.Sprintf("agent %s minted role %s for the first time (first seen %s; learning %s)", o.AgentID, o.Role, at(st.first), d.cfg.Learning),
		map[string]string{"role": o.Role, "known_roles": clip(strings.Join(before, ","), 512), "first_seen": at(st.first),
			"learning": d.cfg.Learning.String(), "lease_id": o.LeaseID})
}
