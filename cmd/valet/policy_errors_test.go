package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker"
)

// groupsGuard forbids agents in the "banned" group. An agent whose groups
// claim is a string instead of a list makes it fail to evaluate (a String
// has no .contains).
const groupsGuard = `
@id("groups-guard")
forbid(principal, action, resource)
when { principal.claims has groups && principal.claims.groups.contains("banned") };
`

// TestPolicyEvaluationErrors: in every flow that asks the policy (mint,
// renew, redeem, break-glass), a forbid that fails to evaluate denies the
// request by default and is logged, counted and audited; with
// policy.on_error skip it is skipped, and still logged, counted and audited.
func TestPolicyEvaluationErrors(t *testing.T) {
	for _, mode := range []broker.PolicyOnError{broker.PolicyOnErrorDeny, broker.PolicyOnErrorSkip} {
		t.Run("on_error "+string(mode), func(t *testing.T) {
			e := newTestEnv(t)
			if err := os.WriteFile(filepath.Join(e.Dir, "policies", "test.cedar"), []byte(testPolicy+groupsGuard), 0o600); err != nil {
				t.Fatal(err)
			}
			logs := &syncBuffer{}
			e.Log = logs
			e.Config.Policy.OnError = mode
			e.Start()

			// The same agent, attested with its groups as a list (the
			// guard evaluates) or as a string (the guard errors).
			good := func(sub string) string { return e.Attest(sub, map[string]any{"groups": []any{"dev"}}) }
			odd := func(sub string) string { return e.Attest(sub, map[string]any{"groups": "dev"}) }

			flows := []struct {
				name   string
				do     func(t *testing.T) response
				status int // when the guard is skipped
			}{
				{"mint", func(t *testing.T) response {
					return e.Do("POST", "/v1/credentials", odd("minter"), map[string]any{"role": "demo"})
				}, http.StatusCreated},
				{"renew", func(t *testing.T) response {
					id := e.Mint(good("renewer"), "demo")["lease_id"].(string)
					return e.Do("POST", "/v1/leases/"+id+"/renew", odd("renewer"), map[string]any{"ttl": "20m"})
				}, http.StatusOK},
				{"redeem", func(t *testing.T) response {
					id := requestGrant(t, e, good("redeemer"), "elevated", "rotate the certificate")
					decide(t, e, testOperatorToken, id, "approve", http.StatusOK)
					return e.Do("POST", "/v1/grants/"+id+"/redeem", odd("redeemer"), nil)
				}, http.StatusCreated},
				{"break-glass", func(t *testing.T) response {
					return e.Do("POST", "/v1/credentials", odd("breaker"), map[string]any{"role": "glass", "break_glass": true, "reason": "production is down"})
				}, http.StatusCreated},
			}
			for _, f := range flows {
				t.Run(f.name, func(t *testing.T) {
					r := f.do(t)
					rid := r.Header.Get("X-Request-Id")
					wantDecision := "allow"
					if mode == broker.PolicyOnErrorDeny {
						wantDecision = "deny"
						if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "policy evaluation error in forbid policy groups-guard (fail closed)") {
							t.Fatalf("status %d %s; want 403 naming the erroring forbid", r.Status, r.Body)
						}
					} else if r.Status != f.status {
						t.Fatalf("status %d %s; want %d: the erroring forbid is skipped", r.Status, r.Body, f.status)
					}
					var decided bool
					for _, rec := range e.auditFor(rid) {
						if rec.Decision == wantDecision && slices.Equal(rec.PolicyErrors, []string{"groups-guard"}) {
							decided = true
						}
					}
					if !decided {
						t.Errorf("no %s audit record of request %s lists policy_errors [groups-guard]: %+v", wantDecision, rid, e.auditFor(rid))
					}
					line := logLine(logs.String(), `msg="policy evaluation error"`, "request_id="+rid)
					for _, want := range []string{"level=WARN", "policy=groups-guard", "effect=forbid", "agent=test/", "err="} {
						if !strings.Contains(line, want) {
							t.Errorf("log line %q lacks %q", line, want)
						}
					}
				})
			}

			m := e.Do("GET", "/metrics", "", nil)
			want := fmt.Sprintf(`valet_policy_evaluation_errors_total{policy="groups-guard"} %d`, len(flows))
			if !strings.Contains(string(m.Body), want) {
				t.Errorf("/metrics lacks %q", want)
			}
			if r := e.Do("GET", "/v1/audit/verify", testOperatorToken, nil); r.JSON(t)["ok"] != true {
				t.Errorf("audit log with policy_errors does not verify: %s", r.Body)
			}
		})
	}
}

// logLine returns the first line of logs holding every one of parts, or "".
func logLine(logs string, parts ...string) string {
	for _, l := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return l
		}
	}
	return ""
}
