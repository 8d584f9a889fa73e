package policy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go/types"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// writePolicies writes name → contents into dir and returns dir.
func writePolicies(tb testing.TB, dir string, files map[string]string) string {
	tb.Helper()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// mustLoad writes files into a fresh directory and loads it.
func mustLoad(tb testing.TB, files map[string]string) *Set {
	tb.Helper()
	set, err := Load(writePolicies(tb, tb.TempDir(), files))
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	return set
}

// monday10 is a Monday, 10:00:00.250 UTC.
var monday10 = time.Date(2026, time.March, 2, 10, 0, 0, 250e6, time.UTC)

// baseRequest is an agent of the production cluster asking for a prod role.
func baseRequest() broker.AuthzRequest {
	return broker.AuthzRequest{
		Principal: &broker.Principal{
			ID:        "k8s-prod/system:serviceaccount:agents:bot",
			Issuer:    "k8s-prod",
			IssuerURL: "https://kubernetes.default.svc",
			Subject:   "system:serviceaccount:agents:bot",
			Claims: map[string]any{
				"sub": "system:serviceaccount:agents:bot",
				"kubernetes.io": map[string]any{
					"namespace":      "agents",
					"serviceaccount": map[string]any{"name": "bot", "uid": "5f1c"},
				},
				"groups":   []any{"dev", "oncall"},
				"level":    float64(42),
				"ratio":    1.5,
				"huge":     1e300,
				"verified": true,
				"nothing":  nil,
			},
			Attributes: map[string]string{
				"namespace":       "agents",
				"service_account": "bot",
				"name-with-dash":  "dashed",
				"sub":             "spoofed", // must not override the real sub
				"claims":          "spoofed",
			},
		},
		Action: broker.ActionMint,
		Role: &broker.Role{
			Name:     "pg-readonly",
			Backend:  "vault-main",
			TTL:      config.Duration(15 * time.Minute),
			MaxTTL:   config.Duration(time.Hour),
			Audience: []string{"db"},
			Scopes:   []string{"read"},
			Labels:   map[string]string{"env": "prod", "team": "data"},
			Approval: broker.ApprovalConfig{Required: 1},
		},
		Context: broker.AuthzContext{
			TTL:       15 * time.Minute,
			Reason:    "nightly report",
			SourceIP:  "10.0.0.7",
			Now:       monday10,
			Risk:      10,
			Approvals: 2,
		},
	}
}

// permitWhen is a single permit policy, id "p", with the condition cond.
func permitWhen(cond string) map[string]string {
	return map[string]string{"p.cedar": `@id("p") permit(principal, action, resource) when { ` + cond + ` };`}
}

func TestAuthorize(t *testing.T) {
	tests := []struct {
		name     string
		policies map[string]string
		modify   func(*broker.AuthzRequest)
		allowed  bool
		ids      []string // determining policies
		errors   int      // policies that failed to evaluate
		onError  broker.PolicyOnError
		closed   bool // denied because a forbid failed to evaluate
	}{
		{
			name:     "permit",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action == Action::"mint", resource == Role::"pg-readonly");`},
			allowed:  true, ids: []string{"p"},
		},
		{
			name: "every matching permit determines",
			policies: map[string]string{"a.cedar": `@id("p1") permit(principal, action, resource);
				@id("p2") permit(principal, action, resource == Role::"pg-readonly");
				@id("p3") permit(principal, action, resource == Role::"other");`},
			allowed: true, ids: []string{"p1", "p2"},
		},
		{
			name: "forbid wins over permit",
			policies: map[string]string{
				"a.cedar": `@id("p") permit(principal, action, resource);`,
				"b.cedar": `@id("f") forbid(principal, action, resource == Role::"pg-readonly");`,
			},
			allowed: false, ids: []string{"f"},
		},
		{
			name:     "default deny: no permit matches",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource == Role::"other");`},
			allowed:  false, ids: nil,
		},
		{
			name:     "default deny: only forbids, none matching",
			policies: map[string]string{"a.cedar": `@id("f") forbid(principal, action, resource) when { context.risk >= 70 };`},
			allowed:  false, ids: nil,
		},
		{
			name:     "an erroring permit does not allow and is reported",
			policies: permitWhen(`principal.no_such_attribute == "x"`),
			allowed:  false, ids: nil, errors: 1,
		},
		{
			name: "an erroring forbid fails closed: the permit does not allow",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("f") forbid(principal, action, resource) when { context.no_such == 1 };`},
			allowed: false, ids: []string{"f"}, errors: 1, closed: true,
		},
		{
			name: "a claim of another type than the policy expects fails closed",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("f") forbid(principal, action, resource) when { principal.claims.sub.contains("bot") };`},
			allowed: false, ids: []string{"f"}, errors: 1, closed: true,
		},
		{
			name:     "an erroring forbid without a permit still names the forbid",
			policies: map[string]string{"a.cedar": `@id("f") forbid(principal, action, resource) when { context.no_such == 1 };`},
			allowed:  false, ids: []string{"f"}, errors: 1, closed: true,
		},
		{
			name: "a forbid that matched decides; the erroring one is reported",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("f") forbid(principal, action, resource) when { context.no_such == 1 };
				@id("g") forbid(principal, action, resource) when { context.risk >= 10 };`},
			allowed: false, ids: []string{"g"}, errors: 1,
		},
		{
			name: "on_error skip: an erroring forbid is skipped, the permit allows",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("f") forbid(principal, action, resource) when { context.no_such == 1 };`},
			onError: broker.PolicyOnErrorSkip,
			allowed: true, ids: []string{"p"}, errors: 1,
		},
		{
			name:     "on_error skip: an erroring permit does not allow",
			policies: permitWhen(`principal.no_such_attribute == "x"`),
			onError:  broker.PolicyOnErrorSkip,
			allowed:  false, ids: nil, errors: 1,
		},
		{
			name: "an erroring forbid that does not apply to the request is not evaluated",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("f") forbid(principal, action == Action::"renew", resource) when { context.no_such == 1 };`},
			allowed: true, ids: []string{"p"},
		},

		// Context.
		{name: "ttl within limit", policies: permitWhen(`context.ttl_seconds <= 900`), allowed: true, ids: []string{"p"}},
		{
			name: "ttl over limit", policies: permitWhen(`context.ttl_seconds <= 900`),
			modify: func(r *broker.AuthzRequest) { r.Context.TTL = 16 * time.Minute },
		},
		{
			name: "ttl rounds up: 900.5s is not <= 900", policies: permitWhen(`context.ttl_seconds <= 900`),
			modify: func(r *broker.AuthzRequest) { r.Context.TTL = 900*time.Second + 500*time.Millisecond },
		},
		{name: "reason", policies: permitWhen(`context.reason like "*report"`), allowed: true, ids: []string{"p"}},
		{
			name: "empty reason is the empty string", policies: permitWhen(`context.reason == ""`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.Reason = "" },
		},
		{name: "now before", policies: permitWhen(`context.now < datetime("2026-03-02T10:00:01Z")`), allowed: true, ids: []string{"p"}},
		{name: "now after", policies: permitWhen(`context.now < datetime("2026-03-02T10:00:00Z")`)},
		{name: "now keeps milliseconds", policies: permitWhen(`context.now == datetime("2026-03-02T10:00:00.250Z")`), allowed: true, ids: []string{"p"}},
		{name: "now_unix", policies: permitWhen(`context.now_unix == 1772445600`), allowed: true, ids: []string{"p"}},
		{name: "hour", policies: permitWhen(`context.hour >= 9 && context.hour < 17`), allowed: true, ids: []string{"p"}},
		{
			name: "hour is UTC", policies: permitWhen(`context.hour == 10 && context.weekday == "mon"`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.Now = monday10.In(time.FixedZone("UTC+14", 14*3600)) },
		},
		{name: "weekday", policies: permitWhen(`context.weekday == "mon"`), allowed: true, ids: []string{"p"}},
		{
			name: "weekend", policies: permitWhen(`!["sat", "sun"].contains(context.weekday)`),
			modify: func(r *broker.AuthzRequest) { r.Context.Now = monday10.Add(-24 * time.Hour) },
		},
		{name: "source ip in range", policies: permitWhen(`context.source_ip.isInRange(ip("10.0.0.0/8"))`), allowed: true, ids: []string{"p"}},
		{
			name: "source ip out of range", policies: permitWhen(`context.source_ip.isInRange(ip("10.0.0.0/8"))`),
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "192.168.1.1" },
		},
		{
			name: "source ip with a port", policies: permitWhen(`context.source_ip == ip("10.0.0.7")`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "10.0.0.7:51234" },
		},
		{
			name: "IPv4-mapped IPv6 source is unmapped", policies: permitWhen(`context.source_ip.isInRange(ip("10.0.0.0/8"))`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "::ffff:10.0.0.7" },
		},
		{
			name: "IPv6 source", policies: permitWhen(`context.source_ip.isInRange(ip("2001:db8::/32"))`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "[2001:db8::1]:443" },
		},
		{
			name: "empty source ip is 0.0.0.0", policies: permitWhen(`context.source_ip == ip("0.0.0.0")`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "" },
		},
		{
			name: "garbage source ip is 0.0.0.0", policies: permitWhen(`context.source_ip == ip("0.0.0.0")`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Context.SourceIP = "10.0.0.0/8" },
		},
		{
			name: "risk forbids",
			policies: map[string]string{"a.cedar": `@id("p") permit(principal, action, resource);
				@id("risk") forbid(principal, action, resource) when { context.risk >= 70 };`},
			modify: func(r *broker.AuthzRequest) { r.Context.Risk = 70 },
			ids:    []string{"risk"},
		},
		{name: "approvals", policies: permitWhen(`context.approvals >= resource.approvals_required`), allowed: true, ids: []string{"p"}},

		// Principal.
		{name: "principal attribute", policies: permitWhen(`principal.namespace == "agents" && principal.service_account == "bot"`), allowed: true, ids: []string{"p"}},
		{name: "attribute that is not an identifier", policies: permitWhen(`principal has "name-with-dash" && principal["name-with-dash"] == "dashed"`), allowed: true, ids: []string{"p"}},
		{name: "reserved attributes win", policies: permitWhen(`principal.sub == "system:serviceaccount:agents:bot" && principal.claims has "kubernetes.io"`), allowed: true, ids: []string{"p"}},
		{name: "issuer and iss", policies: permitWhen(`principal.issuer == "k8s-prod" && principal.iss == "https://kubernetes.default.svc"`), allowed: true, ids: []string{"p"}},
		{name: "principal entity id", policies: map[string]string{"a.cedar": `@id("p") permit(principal == Agent::"k8s-prod/system:serviceaccount:agents:bot", action, resource);`}, allowed: true, ids: []string{"p"}},
		{name: "principal in issuer", policies: map[string]string{"a.cedar": `@id("p") permit(principal in Issuer::"k8s-prod", action, resource);`}, allowed: true, ids: []string{"p"}},
		{name: "principal not in another issuer", policies: map[string]string{"a.cedar": `@id("p") permit(principal in Issuer::"github", action, resource);`}},
		{name: "nested claim record", policies: permitWhen(`principal.claims["kubernetes.io"].serviceaccount.name == "bot"`), allowed: true, ids: []string{"p"}},
		{name: "claim array is a set", policies: permitWhen(`principal.claims.groups.contains("oncall")`), allowed: true, ids: []string{"p"}},
		{name: "integral claim is a Long", policies: permitWhen(`principal.claims.level == 42 && principal.claims.level > 41`), allowed: true, ids: []string{"p"}},
		{name: "fractional claim is a decimal String", policies: permitWhen(`principal.claims.ratio == "1.5"`), allowed: true, ids: []string{"p"}},
		{name: "claim beyond int64 is a String", policies: permitWhen(`principal.claims.huge like "1000*"`), allowed: true, ids: []string{"p"}},
		{name: "boolean claim", policies: permitWhen(`principal.claims.verified`), allowed: true, ids: []string{"p"}},
		{name: "null claim is dropped", policies: permitWhen(`!(principal.claims has nothing)`), allowed: true, ids: []string{"p"}},
		{
			name: "no claims is an empty record", policies: permitWhen(`!(principal.claims has sub)`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Principal.Claims = nil },
		},

		// Action.
		{
			name: "renew", policies: map[string]string{"a.cedar": `@id("p") permit(principal, action == Action::"renew", resource);`}, allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Action = broker.ActionRenew },
		},
		{name: "mint is not renew", policies: map[string]string{"a.cedar": `@id("p") permit(principal, action == Action::"renew", resource);`}},
		{
			name: "future actions need no code", policies: map[string]string{"a.cedar": `@id("p") permit(principal, action in [Action::"break_glass", Action::"redeem"], resource);`}, allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Action = "break_glass" },
		},

		// Resource.
		{name: "resource label", policies: permitWhen(`resource.labels.env == "prod" && resource.labels has team`), allowed: true, ids: []string{"p"}},
		{
			name: "no labels is an empty record", policies: permitWhen(`!(resource.labels has env)`), allowed: true, ids: []string{"p"},
			modify: func(r *broker.AuthzRequest) { r.Role.Labels = nil },
		},
		{name: "resource attributes", policies: permitWhen(`resource.name == "pg-readonly" && resource.backend == "vault-main" && resource.ttl_seconds == 900 && resource.max_ttl_seconds == 3600 && resource.approvals_required == 1`), allowed: true, ids: []string{"p"}},
		{name: "scopes and audience", policies: permitWhen(`resource.scopes.contains("read") && !resource.scopes.contains("write") && resource.audience == ["db"]`), allowed: true, ids: []string{"p"}},
		{name: "ttl against role max", policies: permitWhen(`context.ttl_seconds <= resource.max_ttl_seconds`), allowed: true, ids: []string{"p"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := mustLoad(t, tt.policies)
			req := baseRequest()
			if tt.modify != nil {
				tt.modify(&req)
			}
			dec, err := set.Authorize(context.Background(), req)
			if tt.onError != "" {
				dec, err = set.decide(req, tt.onError)
			}
			if err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			if dec.FailedClosed != tt.closed {
				t.Errorf("FailedClosed = %v, want %v", dec.FailedClosed, tt.closed)
			}
			if dec.Allowed != tt.allowed {
				t.Errorf("Allowed = %v, want %v (determining %v, errors %v)", dec.Allowed, tt.allowed, dec.PolicyIDs, dec.Errors)
			}
			if !slices.Equal(dec.PolicyIDs, tt.ids) {
				t.Errorf("PolicyIDs = %v, want %v (errors %v)", dec.PolicyIDs, tt.ids, dec.Errors)
			}
			if len(dec.Errors) != tt.errors {
				t.Errorf("Errors = %+v, want %d", dec.Errors, tt.errors)
			}
			if dec.Version != set.Version() {
				t.Errorf("Version = %q, want %q", dec.Version, set.Version())
			}
		})
	}
}

func TestAuthorizeErrorNamesPolicy(t *testing.T) {
	set := mustLoad(t, map[string]string{"a.cedar": "permit(principal, action, resource);\nforbid(principal, action, resource) when { principal.missing == 1 };"})
	dec, err := set.Authorize(context.Background(), baseRequest())
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Errors) != 1 || dec.Errors[0].PolicyID != "a.cedar:1" || !dec.Errors[0].Forbid || !strings.Contains(dec.Errors[0].Message, "missing") {
		t.Errorf("Errors = %+v, want the forbid a.cedar:1 with a message naming the attribute", dec.Errors)
	}
	if got := dec.ErroredPolicyIDs(); !slices.Equal(got, []string{"a.cedar:1"}) {
		t.Errorf("ErroredPolicyIDs = %v, want [a.cedar:1]", got)
	}
}

func TestAuthorizeRejectsIncompleteRequest(t *testing.T) {
	set := mustLoad(t, map[string]string{"a.cedar": `permit(principal, action, resource);`})
	for name, modify := range map[string]func(*broker.AuthzRequest){
		"no principal": func(r *broker.AuthzRequest) { r.Principal = nil },
		"no role":      func(r *broker.AuthzRequest) { r.Role = nil },
		"no action":    func(r *broker.AuthzRequest) { r.Action = "" },
	} {
		t.Run(name, func(t *testing.T) {
			req := baseRequest()
			modify(&req)
			dec, err := set.Authorize(context.Background(), req)
			if broker.ErrorCode(err) != broker.EINTERNAL {
				t.Errorf("err = %v, want an EINTERNAL error", err)
			}
			if dec.Allowed {
				t.Error("an incomplete request was allowed")
			}
		})
	}
}

func TestPolicyIDs(t *testing.T) {
	set := mustLoad(t, map[string]string{
		"b.cedar": `permit(principal, action, resource);
			@id("named") forbid(principal, action, resource) when { context.risk > 90 };
			permit(principal, action == Action::"renew", resource);`,
		"a.cedar": `@id("first") permit(principal, action, resource == Role::"x");`,
		"c.txt":   `this is not a policy file and is not loaded`,
	})
	want := []string{"first", "b.cedar:0", "named", "b.cedar:2"}
	if got := set.PolicyIDs(); !slices.Equal(got, want) {
		t.Errorf("PolicyIDs = %v, want %v", got, want)
	}
	// The file:index id is what decisions report.
	dec, err := set.Authorize(context.Background(), baseRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !dec.Allowed || !slices.Equal(dec.PolicyIDs, []string{"b.cedar:0"}) {
		t.Errorf("decision = %+v, want allowed by b.cedar:0", dec)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // substrings of the error
	}{
		{name: "empty directory", files: nil, want: []string{"no *.cedar files", "deny every request"}},
		{name: "only other files", files: map[string]string{"README.md": "# policies", ".hidden.cedar": "permit(principal, action, resource);"}, want: []string{"no *.cedar files"}},
		{name: "files without policies", files: map[string]string{"a.cedar": "// nothing yet\n"}, want: []string{"a.cedar", "no policies"}},
		{
			name:  "syntax error names file and line",
			files: map[string]string{"a.cedar": "permit(principal, action, resource);\n\nforbid(principal, action, resource)\n  when { context.risk >= };\n"},
			want:  []string{"a.cedar:4:"},
		},
		{name: "unterminated string", files: map[string]string{"z.cedar": `permit(principal, action, resource) when { context.reason == "x };`}, want: []string{"z.cedar:1:"}},
		{
			name: "errors of every file are reported",
			files: map[string]string{
				"a.cedar": "permit(principal, actionx, resource);",
				"b.cedar": "permit(principal, action, resource);",
				"c.cedar": "forbid(principal);",
			},
			want: []string{"a.cedar:1:", "c.cedar:1:"},
		},
		{
			name: "duplicate id across files",
			files: map[string]string{
				"a.cedar": `@id("same") permit(principal, action, resource);`,
				"b.cedar": "permit(principal, action, resource);\n@id(\"same\") forbid(principal, action, resource);",
			},
			want: []string{`"same"`, "b.cedar:2", "a.cedar:1", "unique"},
		},
		{name: "@id colliding with a file:index id", files: map[string]string{"a.cedar": `permit(principal, action, resource); @id("a.cedar:0") forbid(principal, action, resource);`}, want: []string{`"a.cedar:0"`}},
		{name: "empty @id", files: map[string]string{"a.cedar": `@id("") permit(principal, action, resource);`}, want: []string{"a.cedar:1", "@id must not be empty"}},
		{name: "duplicate annotation", files: map[string]string{"a.cedar": `@id("x") @id("y") permit(principal, action, resource);`}, want: []string{"a.cedar:1:", "duplicate annotation"}},
		{
			name:  "deep parentheses are refused, not a stack overflow",
			files: map[string]string{"deep.cedar": "permit(principal, action, resource)\nwhen { " + strings.Repeat("(", 1<<20) + "true" + strings.Repeat(")", 1<<20) + " };"},
			want:  []string{"deep.cedar:1:", "nests more than"},
		},
		{
			name:  "long unary chains are refused",
			files: map[string]string{"a.cedar": "permit(principal, action, resource);\n\npermit(principal, action, resource) when { " + strings.Repeat("!", 1<<20) + "true };"},
			want:  []string{"a.cedar:3:", "nests more than"},
		},
		{
			name:  "long operator chains are refused",
			files: map[string]string{"a.cedar": "permit(principal, action, resource) when { true" + strings.Repeat(" && true", 200000) + " };"},
			want:  []string{"a.cedar:1:", "nests more than"},
		},
		{name: "file over the size limit", files: map[string]string{"big.cedar": strings.Repeat("// padding\n", maxFileBytes/10)}, want: []string{"big.cedar", "limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writePolicies(t, t.TempDir(), tt.files)
			_, err := Load(dir)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	t.Run("missing directory", func(t *testing.T) {
		if _, err := Load(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Fatal("Load of a missing directory succeeded")
		}
	})
}

// Large policies of ordinary shape stay well under the nesting bound.
func TestLoadLargeOrdinaryPolicies(t *testing.T) {
	var names []string
	for i := range 5000 {
		names = append(names, `"agent-`+strings.Repeat("x", i%50)+`"`)
	}
	var alternatives []string
	for range 300 {
		alternatives = append(alternatives, `principal.sub == "x"`)
	}
	set := mustLoad(t, map[string]string{
		"big.cedar": `permit(principal, action, resource) when { [` + strings.Join(names, ", ") + `].contains(principal.sub) };
			permit(principal, action, resource) when { ` + strings.Join(alternatives, " || ") + ` };
			// a comment with ( ( ( unbalanced brackets and a ; semicolon
			permit(principal, action, resource) when { context.reason == "a string with ( and ; and \" inside" };`,
	})
	if set.Len() != 3 {
		t.Errorf("Len = %d, want 3", set.Len())
	}
}

func TestSymlinkedPolicyFile(t *testing.T) {
	// A Kubernetes ConfigMap volume presents files as symbolic links.
	data := t.TempDir()
	writePolicies(t, data, map[string]string{"default.cedar": `@id("p") permit(principal, action, resource);`})
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(data, "default.cedar"), filepath.Join(dir, "default.cedar")); err != nil {
		t.Fatal(err)
	}
	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := set.PolicyIDs(); !slices.Equal(got, []string{"p"}) {
		t.Errorf("PolicyIDs = %v, want [p]", got)
	}
}

func TestVersion(t *testing.T) {
	base := map[string][]byte{
		"a.cedar": []byte(`permit(principal, action, resource);`),
		"b.cedar": []byte(`forbid(principal, action, resource) when { context.risk > 90 };`),
	}
	load := func(files map[string][]byte) string {
		t.Helper()
		set, err := LoadFiles(files)
		if err != nil {
			t.Fatal(err)
		}
		return set.Version()
	}
	v := load(base)
	if !regexp.MustCompile(`^sha256:[0-9a-f]{16}$`).MatchString(v) {
		t.Errorf("version %q is not sha256:<16 hex>", v)
	}
	if again := load(base); again != v {
		t.Errorf("same files gave versions %q and %q", v, again)
	}
	// The same files read from disk give the same version.
	dir := t.TempDir()
	for name, src := range base {
		writePolicies(t, dir, map[string]string{name: string(src)})
	}
	if set, err := Load(dir); err != nil || set.Version() != v {
		t.Errorf("Load version = %v (err %v), want %q", set, err, v)
	}

	changes := map[string]map[string][]byte{
		"a byte changed": {"a.cedar": base["a.cedar"], "b.cedar": []byte(`forbid(principal, action, resource) when { context.risk > 80 };`)},
		"a file renamed": {"a.cedar": base["a.cedar"], "c.cedar": base["b.cedar"]},
		"a file added":   {"a.cedar": base["a.cedar"], "b.cedar": base["b.cedar"], "c.cedar": []byte("// comment\n")},
	}
	for name, files := range changes {
		if got := load(files); got == v {
			t.Errorf("%s: version did not change (%q)", name, got)
		}
	}
}

// A set that cannot read principal.claims skips converting them; one that
// names them in any spelling gets them.
func TestClaimsOnlyWhenReadable(t *testing.T) {
	tests := []struct {
		name       string
		policy     string
		needClaims bool
		allowed    bool
	}{
		{"no mention", `permit(principal, action, resource) when { principal.namespace == "agents" };`, false, true},
		{"dot", `permit(principal, action, resource) when { principal.claims.level == 42 };`, true, true},
		{"string index", `permit(principal, action, resource) when { principal["claims"].level == 42 };`, true, true},
		{"escaped name", `permit(principal, action, resource) when { principal["cl\u{61}ims"].level == 42 };`, true, true},
		{"has", `permit(principal, action, resource) when { principal has "cl\x61ims" && principal.namespace == "agents" };`, true, true},
		{"a mention in a comment counts", `permit(principal, action, resource) when { principal.namespace == "agents" }; // claims`, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := mustLoad(t, map[string]string{"a.cedar": tt.policy})
			if set.needClaims != tt.needClaims {
				t.Errorf("needClaims = %v, want %v", set.needClaims, tt.needClaims)
			}
			dec, err := set.Authorize(context.Background(), baseRequest())
			if err != nil {
				t.Fatal(err)
			}
			if dec.Allowed != tt.allowed || len(dec.Errors) > 0 {
				t.Errorf("decision %+v, want allowed=%v without errors", dec, tt.allowed)
			}
		})
	}
}

// The role cache never serves a role that has changed since it was cached.
func TestRoleCacheSeesChanges(t *testing.T) {
	set := mustLoad(t, permitWhen(`resource.labels.env == "prod" && resource.scopes.contains("read") && resource.max_ttl_seconds == 3600`))
	req := baseRequest()
	check := func(want bool) {
		t.Helper()
		dec, err := set.Authorize(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if dec.Allowed != want {
			t.Errorf("allowed = %v, want %v", dec.Allowed, want)
		}
	}
	check(true)
	check(true)                    // from the cache
	req.Role.Labels["env"] = "dev" // changed in place
	check(false)
	req.Role = &broker.Role{Name: "pg-readonly", Labels: map[string]string{"env": "prod"}, Scopes: []string{"read"}, MaxTTL: config.Duration(time.Hour)}
	check(true)
	req.Role.Scopes[0] = "write"
	check(false)
	req.Role.Scopes[0] = "read"
	req.Role.MaxTTL = config.Duration(2 * time.Hour)
	check(false)
}

// The agent cache never serves an agent whose identity or mapped attributes
// changed since it was cached, and stays bounded while staying correct.
func TestPrincipalCacheSeesChanges(t *testing.T) {
	set := mustLoad(t, permitWhen(`principal.namespace == "agents" && principal.iss == "https://kubernetes.default.svc" && principal in Issuer::"k8s-prod"`))
	if set.needClaims {
		t.Fatal("the policy reads no claims; the cache would not be used")
	}
	tests := []struct {
		name   string
		modify func(p *broker.Principal)
		want   bool
	}{
		{"as verified", func(p *broker.Principal) {}, true},
		{"again, from the cache", func(p *broker.Principal) {}, true},
		{"attribute changed in place", func(p *broker.Principal) { p.Attributes["namespace"] = "other" }, false},
		{"attribute removed", func(p *broker.Principal) { delete(p.Attributes, "namespace") }, false},
		{"other issuer URL", func(p *broker.Principal) { p.IssuerURL = "https://other.example" }, false},
		{"other issuer name", func(p *broker.Principal) { p.Issuer = "k8s-dev" }, false},
		{"back as verified", func(p *broker.Principal) {}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := baseRequest()
			tt.modify(req.Principal)
			dec, err := set.Authorize(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Allowed != tt.want {
				t.Errorf("allowed = %v, want %v", dec.Allowed, tt.want)
			}
		})
	}

	t.Run("more agents than the cache holds", func(t *testing.T) {
		for i := range maxCachedEntities + 10 {
			req := baseRequest()
			req.Principal.ID = fmt.Sprintf("k8s-prod/agent-%d", i)
			req.Principal.Attributes["namespace"] = []string{"agents", "other"}[i%2]
			dec, err := set.Authorize(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Allowed != (i%2 == 0) {
				t.Fatalf("agent %d: allowed = %v", i, dec.Allowed)
			}
		}
		if n := set.principals.n.Load(); n > maxCachedEntities {
			t.Errorf("%d agents cached, want at most %d", n, maxCachedEntities)
		}
	})
}

// contextRecord reuses its scratch map: a record built earlier must keep
// its own values.
func TestContextRecordsAreIndependent(t *testing.T) {
	first := contextRecord(broker.AuthzContext{Reason: "first", Risk: 1, Now: monday10})
	contextRecord(broker.AuthzContext{Reason: "second", Risk: 2, Now: monday10.Add(time.Hour)})
	want := types.NewRecord(types.RecordMap{
		"ttl_seconds": types.Long(0),
		"reason":      types.String("first"),
		"source_ip":   unknownIP,
		"now":         types.NewDatetime(monday10.UTC()),
		"now_unix":    types.Long(monday10.Unix()),
		"hour":        types.Long(monday10.UTC().Hour()),
		"weekday":     weekdays[monday10.UTC().Weekday()],
		"risk":        types.Long(1),
		"approvals":   types.Long(0),
	})
	if !first.Equal(want) {
		t.Errorf("first record = %v, want %v", first, want)
	}
}
