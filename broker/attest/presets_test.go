package attest_test

import (
	"context"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
)

// wantAttrs checks the principal's attributes exactly.
func wantAttrs(want map[string]string) func(t *testing.T, p *broker.Principal) {
	return func(t *testing.T, p *broker.Principal) {
		t.Helper()
		if !maps.Equal(p.Attributes, want) {
			t.Errorf("attributes:\n got %v\nwant %v", p.Attributes, want)
		}
	}
}

// both runs several checks.
func both(checks ...func(t *testing.T, p *broker.Principal)) func(t *testing.T, p *broker.Principal) {
	return func(t *testing.T, p *broker.Principal) {
		t.Helper()
		for _, c := range checks {
			c(t, p)
		}
	}
}

func wantLineage(want broker.Lineage) func(t *testing.T, p *broker.Principal) {
	return func(t *testing.T, p *broker.Principal) {
		t.Helper()
		if p.Lineage != want {
			t.Errorf("lineage:\n got %+v\nwant %+v", p.Lineage, want)
		}
	}
}

// withClaims returns a token maker for claims(extra).
func withClaims(extra map[string]any) func(t *testing.T, e *env) string {
	return func(t *testing.T, e *env) string { return sign(t, e.dev, claims(extra)) }
}

// Rule 11: the kubernetes preset.
func TestKubernetesPreset(t *testing.T) {
	k8s := func(c *attest.IssuerConfig) { c.Name, c.Type = "k8s", attest.IssuerKubernetes }
	sub := "system:serviceaccount:agents:builder"
	full := map[string]any{
		"sub": sub,
		"jti": "tok-1",
		"kubernetes.io": map[string]any{
			"namespace":      "agents",
			"serviceaccount": map[string]any{"name": "builder", "uid": "sa-uid"},
			"pod":            map[string]any{"name": "builder-7d9", "uid": "pod-uid"},
			"node":           map[string]any{"name": "node-1", "uid": "node-uid"},
		},
	}
	with := func(path string, v any) map[string]any {
		c := map[string]any{}
		b, _ := json.Marshal(full)
		_ = json.Unmarshal(b, &c)
		k := c["kubernetes.io"].(map[string]any)
		switch path {
		case "namespace":
			k["namespace"] = v
		case "sa.name":
			k["serviceaccount"].(map[string]any)["name"] = v
		case "pod.uid":
			k["pod"].(map[string]any)["uid"] = v
		case "kubernetes.io":
			c["kubernetes.io"] = v
		}
		return c
	}
	runCases(t, []verifyCase{
		{name: "bound service account token", mod: k8s, token: withClaims(full), check: both(
			wantAttrs(map[string]string{
				"namespace": "agents", "service_account": "builder", "service_account_uid": "sa-uid",
				"pod": "builder-7d9", "pod_uid": "pod-uid", "node": "node-1",
			}),
			wantLineage(broker.Lineage{Issuer: testIss, JTI: "tok-1", PodUID: "pod-uid"}),
			func(t *testing.T, p *broker.Principal) {
				if p.ID != "k8s/"+sub {
					t.Errorf("ID = %q", p.ID)
				}
			},
		)},
		{name: "sub only", mod: k8s, token: withClaims(map[string]any{"sub": sub}),
			check: wantAttrs(map[string]string{"namespace": "agents", "service_account": "builder"})},
		{name: "namespace disagrees with sub", mod: k8s, token: withClaims(with("namespace", "kube-system")),
			code: broker.EUNAUTHORIZED, msg: `sub names namespace "agents" but kubernetes.io.namespace is "kube-system"`},
		{name: "service account disagrees with sub", mod: k8s, token: withClaims(with("sa.name", "admin")),
			code: broker.EUNAUTHORIZED, msg: `sub names service account "builder" but kubernetes.io.serviceaccount.name is "admin"`},
		{name: "sub not a service account", mod: k8s, token: withClaims(map[string]any{"sub": "system:node:node-1"}),
			code: broker.EUNAUTHORIZED, msg: "is not system:serviceaccount:<namespace>:<name>"},
		{name: "sub with an extra part", mod: k8s, token: withClaims(map[string]any{"sub": sub + ":x"}),
			code: broker.EUNAUTHORIZED, msg: "is not system:serviceaccount"},
		{name: "sub with an empty namespace", mod: k8s, token: withClaims(map[string]any{"sub": "system:serviceaccount::builder"}),
			code: broker.EUNAUTHORIZED, msg: "is not system:serviceaccount"},
		{name: "kubernetes.io not an object", mod: k8s, token: withClaims(with("kubernetes.io", "agents")),
			code: broker.EUNAUTHORIZED, msg: "claim kubernetes.io must be an object"},
		{name: "pod uid not a string", mod: k8s, token: withClaims(with("pod.uid", 7)),
			code: broker.EUNAUTHORIZED, msg: "claim kubernetes.io.pod.uid must be a string"},
		{name: "pod uid with NUL", mod: k8s, token: withClaims(with("pod.uid", "pod-uid\x00zz")),
			code: broker.EUNAUTHORIZED, msg: "attestation claim kubernetes.io.pod.uid contains control characters"},
		{name: "pod uid too long", mod: k8s, token: withClaims(with("pod.uid", strings.Repeat("u", 257))),
			code: broker.EUNAUTHORIZED, msg: "attestation claim kubernetes.io.pod.uid is longer than 256 bytes"},
		{name: "mapping overrides a preset attribute", token: withClaims(map[string]any{"sub": sub, "team": "blue"}),
			mod: func(c *attest.IssuerConfig) {
				k8s(c)
				c.ClaimMappings = map[string]string{"namespace": "team"}
			},
			check: wantAttrs(map[string]string{"namespace": "blue", "service_account": "builder"})},
	})
}

// Rule 11: the github preset.
func TestGitHubPreset(t *testing.T) {
	gh := func(c *attest.IssuerConfig) { c.Name, c.Type = "gha", attest.IssuerGitHub }
	full := map[string]any{
		"sub":              "repo:octo/app:ref:refs/heads/main",
		"jti":              "gh-jti",
		"repository":       "octo/app",
		"repository_owner": "octo",
		"repository_id":    json.Number("98765432109876543210"), // longer than int64: kept digit for digit
		"ref":              "refs/heads/main",
		"ref_type":         "branch",
		"sha":              "0123abcd",
		"workflow":         "deploy",
		"job_workflow_ref": "octo/app/.github/workflows/deploy.yml@refs/heads/main",
		"environment":      "prod",
		"actor":            "alice",
		"event_name":       "push",
		"run_id":           "4242",
		"run_attempt":      2,
		"runner_env":       "github-hosted", // not a preset attribute
	}
	runCases(t, []verifyCase{
		{name: "workflow token", mod: gh, token: withClaims(full), check: both(
			wantAttrs(map[string]string{
				"repository": "octo/app", "repository_owner": "octo", "repository_id": "98765432109876543210",
				"ref": "refs/heads/main", "ref_type": "branch", "sha": "0123abcd", "workflow": "deploy",
				"job_workflow_ref": "octo/app/.github/workflows/deploy.yml@refs/heads/main", "environment": "prod",
				"actor": "alice", "event_name": "push", "run_id": "4242", "run_attempt": "2",
			}),
			wantLineage(broker.Lineage{Issuer: testIss, JTI: "gh-jti", RunID: "4242"}),
		)},
		{name: "numeric run_id", mod: gh, token: withClaims(map[string]any{"run_id": 1e3}),
			check: wantLineage(broker.Lineage{Issuer: testIss, RunID: "1000"})},
		{name: "only some claims", mod: gh, token: withClaims(map[string]any{"repository": "octo/app"}),
			check: wantAttrs(map[string]string{"repository": "octo/app"})},
		{name: "run_id an object", mod: gh, token: withClaims(map[string]any{"run_id": map[string]any{"x": 1}}),
			code: broker.EUNAUTHORIZED, msg: "github attestation claim run_id must be a string or a number"},
		{name: "run_id with a newline", mod: gh, token: withClaims(map[string]any{"run_id": "4242\n4243"}),
			code: broker.EUNAUTHORIZED, msg: "attestation claim run_id contains control characters"},
		{name: "run_id too long", mod: gh, token: withClaims(map[string]any{"run_id": strings.Repeat("4", 257)}),
			code: broker.EUNAUTHORIZED, msg: "attestation claim run_id is longer than 256 bytes"},
	})
}

// Rule 11: the spiffe preset and SPIFFE ID validation.
func TestSPIFFEPreset(t *testing.T) {
	spiffe := func(c *attest.IssuerConfig) {
		c.Name, c.Type, c.TrustDomain = "spire", attest.IssuerSPIFFE, "example.org"
	}
	id := "spiffe://example.org/ns/prod/sa/agent"
	runCases(t, []verifyCase{
		{name: "valid ID", mod: spiffe, token: withClaims(map[string]any{"sub": id, "jti": "s-1"}), check: both(
			wantAttrs(map[string]string{"spiffe_id": id, "trust_domain": "example.org", "path": "/ns/prod/sa/agent"}),
			wantLineage(broker.Lineage{Issuer: testIss, JTI: "s-1", SPIFFEID: id}),
		)},
		{name: "any trust domain when none is configured", mod: func(c *attest.IssuerConfig) { c.Type = attest.IssuerSPIFFE },
			token: withClaims(map[string]any{"sub": "spiffe://other.example/x"}),
			check: wantAttrs(map[string]string{"spiffe_id": "spiffe://other.example/x", "trust_domain": "other.example", "path": "/x"})},
		{name: "trust domain chars", mod: func(c *attest.IssuerConfig) { c.Type = attest.IssuerSPIFFE },
			token: withClaims(map[string]any{"sub": "spiffe://a-b_c.9/P.a-t_h"})},
		{name: "other trust domain", mod: spiffe, token: withClaims(map[string]any{"sub": "spiffe://evil.org/ns/prod"}),
			code: broker.EUNAUTHORIZED, msg: `is in trust domain "evil.org", not "example.org"`},
	})

	invalid := []struct{ name, id, msg string }{
		{"not spiffe", "https://example.org/x", "it must start with spiffe://"},
		{"upper-case scheme", "SPIFFE://example.org/x", "it must start with spiffe://"},
		{"upper-case trust domain", "spiffe://Example.org/x", "the trust domain may only hold"},
		{"port", "spiffe://example.org:443/x", "the trust domain may only hold"},
		{"user info", "spiffe://user@example.org/x", "the trust domain may only hold"},
		{"empty trust domain", "spiffe:///x", "the trust domain is empty"},
		{"no path", "spiffe://example.org", "it has no path"},
		{"root path", "spiffe://example.org/", "the path has an empty segment"},
		{"trailing slash", "spiffe://example.org/x/", "the path has an empty segment"},
		{"double slash", "spiffe://example.org/x//y", "the path has an empty segment"},
		{"dot segment", "spiffe://example.org/x/./y", "the path has a . or .. segment"},
		{"dot-dot segment", "spiffe://example.org/x/..", "the path has a . or .. segment"},
		{"query", "spiffe://example.org/x?y=1", "the path may only hold"},
		{"fragment", "spiffe://example.org/x#y", "the path may only hold"},
		{"percent-encoding", "spiffe://example.org/x%20y", "the path may only hold"},
	}
	var cases []verifyCase
	for _, tc := range invalid {
		cases = append(cases, verifyCase{
			name: tc.name, mod: spiffe, token: withClaims(map[string]any{"sub": tc.id}),
			code: broker.EUNAUTHORIZED, msg: "is not a valid SPIFFE ID: " + tc.msg,
		})
	}
	runCases(t, cases)
}

// withFull returns a token maker for signFull(extra): nil values remove even
// iss, iat and exp.
func withFull(extra map[string]any) func(t *testing.T, e *env) string {
	return func(t *testing.T, e *env) string { return signFull(t, e.dev, extra) }
}

// Rule 2: a spiffe issuer without iss matches tokens without iss by the
// trust domain of their sub.
func TestSPIFFEWithoutIss(t *testing.T) {
	noIss := func(c *attest.IssuerConfig) {
		c.Name, c.Type, c.Issuer, c.TrustDomain = "spire", attest.IssuerSPIFFE, "", "example.org"
	}
	id := "spiffe://example.org/workload"
	runCases(t, []verifyCase{
		{name: "matched by trust domain", mod: noIss, token: withFull(map[string]any{"iss": nil, "sub": id, "jti": "j"}),
			check: both(
				wantLineage(broker.Lineage{Issuer: "spiffe://example.org", JTI: "j", SPIFFEID: id}),
				func(t *testing.T, p *broker.Principal) {
					if p.IssuerURL != "" || p.ID != "spire/"+id {
						t.Errorf("IssuerURL %q, ID %q", p.IssuerURL, p.ID)
					}
				},
			)},
		{name: "other trust domain", mod: noIss, token: withFull(map[string]any{"iss": nil, "sub": "spiffe://evil.org/workload"}),
			code: broker.EUNAUTHORIZED, msg: "its sub is not a SPIFFE ID in a trusted trust domain"},
		{name: "sub not a SPIFFE ID", mod: noIss, token: withFull(map[string]any{"iss": nil, "sub": "agent"}),
			code: broker.EUNAUTHORIZED, msg: "its sub is not a SPIFFE ID in a trusted trust domain"},
		{name: "trusted trust domain, invalid path", mod: noIss, token: withFull(map[string]any{"iss": nil, "sub": "spiffe://example.org/a/../b"}),
			code: broker.EUNAUTHORIZED, msg: "not a valid SPIFFE ID"},
		{name: "iss set but not trusted", mod: noIss, token: withClaims(map[string]any{"sub": id}),
			code: broker.EUNAUTHORIZED, msg: "is not trusted"},
	})
}

// Rule 11: claim mappings for every issuer type.
func TestClaimMappings(t *testing.T) {
	mappings := func(c *attest.IssuerConfig) {
		c.ClaimMappings = map[string]string{
			"team":    "ext.team",
			"level":   "ext.level",
			"ratio":   "ext.ratio",
			"admin":   "ext.admin",
			"ns":      "kubernetes.io.namespace",
			"dotted":  "a.b",
			"missing": "ext.nope",
			"null":    "ext.null",
		}
	}
	runCases(t, []verifyCase{
		{name: "paths, types and dotted names", mod: mappings, token: withClaims(map[string]any{
			"ext":           map[string]any{"team": "blue", "level": 3, "ratio": 0.5, "admin": true, "null": nil},
			"kubernetes.io": map[string]any{"namespace": "agents"},
			"a.b":           "whole",
			"a":             map[string]any{"b": "nested"},
		}), check: wantAttrs(map[string]string{
			"team": "blue", "level": "3", "ratio": "0.5", "admin": "true", "ns": "agents", "dotted": "whole",
		})},
		{name: "nested path when no claim has the dotted name", mod: mappings, token: withClaims(map[string]any{
			"a": map[string]any{"b": "nested"},
		}), check: wantAttrs(map[string]string{"dotted": "nested"})},
		{name: "object value", mod: mappings, token: withClaims(map[string]any{"ext": map[string]any{"team": map[string]any{"x": 1}}}),
			code: broker.EUNAUTHORIZED, msg: `claim "ext.team" (mapped to attribute "team" by issuer oidc) must be a string, number or boolean`},
		{name: "array value", mod: mappings, token: withClaims(map[string]any{"ext": map[string]any{"level": []int{1}}}),
			code: broker.EUNAUTHORIZED, msg: `claim "ext.level"`},
	})
}

// Principal.Claims hold every verified claim, as decoded with UseNumber.
func TestPrincipalClaims(t *testing.T) {
	e := newEnv(t, nil)
	tok := sign(t, e.dev, claims(map[string]any{"big": json.Number("12345678901234567890"), "nested": map[string]any{"list": []any{1, "x"}}}))
	p, err := e.v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Claims["big"] != json.Number("12345678901234567890") {
		t.Errorf("big = %#v", p.Claims["big"])
	}
	nested, _ := p.Claims["nested"].(map[string]any)
	list, _ := nested["list"].([]any)
	if len(list) != 2 || list[0] != json.Number("1") || list[1] != "x" {
		t.Errorf("nested = %#v", p.Claims["nested"])
	}
	for _, k := range []string{"iss", "sub", "aud", "iat", "exp"} {
		if _, ok := p.Claims[k]; !ok {
			t.Errorf("claim %s missing", k)
		}
	}
}
