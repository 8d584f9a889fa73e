package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker"
)

const exampleDir = "testdata/example"

// copyExamplePolicies copies the example *.cedar files into a new directory.
func copyExamplePolicies(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	matches, err := filepath.Glob(filepath.Join(exampleDir, "*.cedar"))
	if err != nil || len(matches) == 0 {
		t.Fatalf("no example policies: %v", err)
	}
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		writePolicies(t, dir, map[string]string{filepath.Base(m): string(b)})
	}
	return dir
}

// The example policies and their tests are documentation: they must pass.
func TestRunTestsExample(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := RunTests(exampleDir, exampleDir, TestOptions{}, &out)
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if failed != 0 || passed < 10 {
		t.Errorf("passed %d, failed %d; want at least 10 passed and none failed\n%s", passed, failed, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != passed+1 {
		t.Errorf("%d output lines for %d cases, want one per case and a summary:\n%s", len(lines), passed, out.String())
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "PASS ") {
			t.Errorf("line %q does not start with PASS", l)
		}
	}
	if summary := lines[len(lines)-1]; !strings.HasPrefix(summary, "ok: ") || !strings.Contains(summary, "0 failed") {
		t.Errorf("summary %q", summary)
	}
}

// typoForbid is a forbid with a misspelt attribute: it fails to evaluate
// for every request.
var typoForbid = map[string]string{"typo.cedar": `@id("typo") forbid(principal, action, resource) when { principal.namepsace == "web" };`}

func TestRunTestsFailures(t *testing.T) {
	tests := []struct {
		name          string
		extraPolicies map[string]string // added to the example's
		testFile      string
		opts          TestOptions
		passed        int
		failed        int
		lines         []string // expected in the output
	}{
		{
			name: "wrong decision",
			testFile: `cases:
  - name: namespace agents may read
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: allow
  - name: web namespace may read too, says this wrong test
    principal: {issuer: k8s-prod, sub: web, attributes: {namespace: web}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: allow
`,
			passed: 1, failed: 1,
			lines: []string{
				"PASS namespace agents may read",
				"FAIL web namespace may read too, says this wrong test: expected allow, got deny (no policy permits this request (deny by default); determining: []; errors: [])",
				"FAIL: 1 passed, 1 failed",
			},
		},
		{
			name: "wrong forbid is named",
			testFile: `cases:
  - name: risky agent
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7, risk: 99}
    expect: allow
`,
			failed: 1,
			lines:  []string{"FAIL risky agent: expected allow, got deny (forbidden by policy; determining: [deny-high-risk]; errors: [])"},
		},
		{
			name:          "an unexpected evaluation error fails the case",
			extraPolicies: typoForbid,
			testFile: `cases:
  - name: typo in a forbid
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: deny
`,
			failed: 1,
			lines:  []string{"FAIL typo in a forbid: deny as expected, but policies failed to evaluate that expect_errors does not list: [typo: "},
		},
		{
			name:          "a forbid that errors fails closed",
			extraPolicies: typoForbid,
			testFile: `cases:
  - name: typo in a forbid
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: allow
    expect_errors: [typo]
`,
			failed: 1,
			lines:  []string{"FAIL typo in a forbid: expected allow, got deny (policy evaluation error in forbid policy typo (fail closed); determining: [typo]; errors: [typo: "},
		},
		{
			name:          "expected errors pass",
			extraPolicies: typoForbid,
			testFile: `cases:
  - name: typo in a forbid denies
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: deny
    expect_policies: [typo]
    expect_errors: [typo]
`,
			passed: 1,
			lines:  []string{"PASS typo in a forbid denies (policies that failed to evaluate, as expected: [typo: "},
		},
		{
			name:          "on_error skip follows Cedar",
			extraPolicies: typoForbid,
			opts:          TestOptions{OnError: broker.PolicyOnErrorSkip},
			testFile: `cases:
  - name: typo in a forbid is skipped
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: allow
    expect_errors: [typo]
`,
			passed: 1,
			lines:  []string{"PASS typo in a forbid is skipped (policies that failed to evaluate, as expected: [typo: "},
		},
		{
			name: "expected errors that do not happen fail the case",
			testFile: `cases:
  - name: no typo here
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 10.0.0.7}
    expect: allow
    expect_errors: [typo]
`,
			failed: 1,
			lines:  []string{"FAIL no typo here: allow as expected, but policies that failed to evaluate are [], expected [typo]"},
		},
		{
			name: "wrong determining policies",
			testFile: `cases:
  - name: outside the network
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 192.0.2.1}
    expect: deny
    expect_policies: [deny-high-risk]
`,
			failed: 1,
			lines:  []string{"FAIL outside the network: deny as expected, but determining policies are [prod-cluster-network-only], expected [deny-high-risk]"},
		},
		{
			name: "expect_policies [] means a default deny",
			testFile: `cases:
  - name: forbidden, not default-denied
    principal: {issuer: k8s-prod, sub: bot, attributes: {namespace: agents}}
    role: {name: pg-readonly, labels: {env: prod}}
    context: {source_ip: 192.0.2.1}
    expect: deny
    expect_policies: []
`,
			failed: 1,
			lines:  []string{"FAIL forbidden, not default-denied: deny as expected, but determining policies are [prod-cluster-network-only], expected []"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			policies := writePolicies(t, copyExamplePolicies(t), tt.extraPolicies)
			tests := writePolicies(t, t.TempDir(), map[string]string{"case.test.yaml": tt.testFile})
			var out bytes.Buffer
			passed, failed, err := RunTests(policies, tests, tt.opts, &out)
			if err != nil {
				t.Fatalf("RunTests: %v", err)
			}
			if passed != tt.passed || failed != tt.failed {
				t.Errorf("passed %d, failed %d; want %d, %d\n%s", passed, failed, tt.passed, tt.failed, out.String())
			}
			for _, l := range tt.lines {
				if !strings.Contains(out.String(), l) {
					t.Errorf("output lacks %q:\n%s", l, out.String())
				}
			}
		})
	}
}

func TestRunTestsErrors(t *testing.T) {
	valid := `cases:
  - name: ok
    principal: {issuer: k8s-prod, sub: bot}
    role: {name: pg-readonly}
    expect: deny
`
	tests := []struct {
		name  string
		files map[string]string // test files; nil policies means the example's
		want  []string
	}{
		{
			name:  "unknown key",
			files: map[string]string{"a.test.yaml": valid, "typo.test.yaml": strings.Replace(valid, "expect: deny", "expect: deny\n    expected_policies: [x]", 1)},
			want:  []string{"typo.test.yaml", "expected_policies"},
		},
		{name: "unknown key in a nested object", files: map[string]string{"a.test.yaml": strings.Replace(valid, "sub: bot", "sub: bot, namespace: agents", 1)}, want: []string{"a.test.yaml", "namespace"}},
		{name: "invalid expect", files: map[string]string{"a.test.yaml": strings.Replace(valid, "expect: deny", "expect: permit", 1)}, want: []string{"a.test.yaml", "cases[0]", "allow or deny"}},
		{name: "missing expect", files: map[string]string{"a.test.yaml": strings.Replace(valid, "expect: deny", "", 1)}, want: []string{"a.test.yaml", "expect"}},
		{name: "missing fields", files: map[string]string{"a.test.yaml": "cases:\n  - expect: allow\n"}, want: []string{"a.test.yaml", "name, principal.issuer, principal.sub, role.name must be set"}},
		{name: "bad duration", files: map[string]string{"a.test.yaml": strings.Replace(valid, "name: pg-readonly", "name: pg-readonly, ttl: soon", 1)}, want: []string{"a.test.yaml", "line 4", "soon"}},
		// A role key set to 0 is not replaced by the role's default.
		{name: "zero role ttl", files: map[string]string{"a.test.yaml": strings.Replace(valid, "name: pg-readonly", "name: pg-readonly, ttl: 0s", 1)},
			want: []string{"a.test.yaml", "cases[0]", "role.ttl must be positive; it is 0s"}},
		{name: "zero role max_ttl", files: map[string]string{"a.test.yaml": strings.Replace(valid, "name: pg-readonly", "name: pg-readonly, max_ttl: 0", 1)},
			want: []string{"a.test.yaml", "cases[0]", "role.max_ttl (0s) must not be less than ttl (15m0s)"}},
		{name: "duplicate names", files: map[string]string{"a.test.yaml": valid, "b.test.yaml": valid}, want: []string{"b.test.yaml", `"ok"`, "a.test.yaml"}},
		{name: "no cases", files: map[string]string{"a.test.yaml": "cases: []\n"}, want: []string{"a.test.yaml", "no test cases"}},
		{name: "empty file", files: map[string]string{"a.test.yaml": ""}, want: []string{"a.test.yaml", "empty"}},
		{name: "two documents", files: map[string]string{"a.test.yaml": valid + "---\n" + valid}, want: []string{"a.test.yaml", "single YAML document"}},
		{name: "no test files", files: map[string]string{"notes.yaml": valid}, want: []string{"no *.test.yaml files"}},
		{name: "claims with non-string keys", files: map[string]string{"a.test.yaml": strings.Replace(valid, "sub: bot", "sub: bot, claims: {nested: {1: x}}", 1)}, want: []string{"a.test.yaml", "claims"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writePolicies(t, t.TempDir(), tt.files)
			var out bytes.Buffer
			_, _, err := RunTests(exampleDir, dir, TestOptions{}, &out)
			if err == nil {
				t.Fatalf("RunTests succeeded, want an error; output:\n%s", out.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if out.Len() != 0 {
				t.Errorf("cases ran despite the invalid test file:\n%s", out.String())
			}
		})
	}

	t.Run("broken policies", func(t *testing.T) {
		policies := writePolicies(t, t.TempDir(), map[string]string{"a.cedar": "permit(principal, action, resource"})
		tests := writePolicies(t, t.TempDir(), map[string]string{"a.test.yaml": valid})
		if _, _, err := RunTests(policies, tests, TestOptions{}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "a.cedar:1:") {
			t.Errorf("RunTests = %v, want an error naming a.cedar:1", err)
		}
	})
}

// Claims in a test behave as the same claims in a token: numbers are JSON
// numbers, so an integer is a Long and a fraction a decimal String.
func TestRunTestsClaimsAsJSON(t *testing.T) {
	policies := writePolicies(t, t.TempDir(), map[string]string{"a.cedar": `
		@id("typed") permit(principal, action, resource) when {
			principal.claims.count == 3 && principal.claims.ratio == "0.5" &&
			principal.claims.flag && principal.claims.list.contains("b") &&
			principal.claims.when == "2026-01-01T00:00:00Z" &&
			principal.claims.obj.inner == "x" && !(principal.claims has missing)
		};`})
	tests := writePolicies(t, t.TempDir(), map[string]string{"a.test.yaml": `cases:
  - name: typed claims
    principal:
      issuer: dev
      sub: bot
      claims: {count: 3, ratio: 0.5, flag: true, list: [a, b], when: 2026-01-01T00:00:00Z, obj: {inner: x}, missing: null}
    role: {name: r}
    expect: allow
    expect_policies: [typed]
`})
	var out bytes.Buffer
	passed, failed, err := RunTests(policies, tests, TestOptions{}, &out)
	if err != nil || passed != 1 || failed != 0 {
		t.Errorf("RunTests = %d, %d, %v; want 1 passed\n%s", passed, failed, err, out.String())
	}
}
