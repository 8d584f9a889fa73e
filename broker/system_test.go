package broker_test

import (
	"errors"
	"maps"
	"testing"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
)

func TestSystemRecords(t *testing.T) {
	cases := []struct {
		name     string
		got      audit.Entry
		kind     string
		decision string
		reason   string
		version  string
		details  map[string]string
	}{
		{"policy set loaded", broker.PolicyReloadRecord("v2", nil), audit.KindPolicyReload, audit.Allow,
			"policy set loaded", "v2", nil},
		{"policy set refused", broker.PolicyReloadRecord("v1", errors.New("a.cedar:3: unexpected token")), audit.KindPolicyReload, audit.Deny,
			"reload refused, previous policy set kept: a.cedar:3: unexpected token", "v1", nil},
		{"server start", broker.ServerStartRecord("v1", "abc123", 2, "1.2.3"), audit.KindServerStart, "",
			"", "v1", map[string]string{"config_sha256": "abc123", "recovered_pending": "2", "version": "1.2.3"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.got
			if e.Kind != c.kind || e.Decision != c.decision || e.Reason != c.reason || e.PolicyVersion != c.version ||
				e.Actor != (audit.Actor{Type: audit.ActorSystem, ID: "valet"}) || !maps.Equal(e.Details, c.details) {
				t.Errorf("record %+v, want kind %s, decision %q, reason %q, policy version %s, details %v, actor valet",
					e, c.kind, c.decision, c.reason, c.version, c.details)
			}
		})
	}
}
