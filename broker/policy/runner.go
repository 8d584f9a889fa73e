package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// defaultTestTime is context.now in a test case that does not set it: a
// Monday, noon UTC, so time-of-day policies see working hours.
var defaultTestTime = time.Date(2026, time.January, 5, 12, 0, 0, 0, time.UTC)

// testFile is the schema of a *.test.yaml file; see the package doc.
type testFile struct {
	Cases []testCase `yaml:"cases"`
}

type testCase struct {
	Name      string        `yaml:"name"`
	Principal testPrincipal `yaml:"principal"`
	Action    string        `yaml:"action"`
	Role      testRole      `yaml:"role"`
	Context   testContext   `yaml:"context"`
	Expect    string        `yaml:"expect"`
	// A pointer tells "not given" (not checked) from [] (no policy may
	// determine the decision, i.e. a default deny).
	ExpectPolicies *[]string `yaml:"expect_policies"`
	// ExpectErrors lists the policies expected to fail to evaluate (as a
	// set); not given means none may.
	ExpectErrors []string `yaml:"expect_errors"`

	file   string         // where the case was read, for messages
	claims map[string]any // Principal.Claims after a JSON round trip
}

type testPrincipal struct {
	Issuer     string            `yaml:"issuer"`
	ISS        string            `yaml:"iss"`
	Sub        string            `yaml:"sub"`
	Claims     map[string]any    `yaml:"claims"`
	Attributes map[string]string `yaml:"attributes"`
}

// testRole is a case's role. TTL and MaxTTL are pointers so an absent key
// (the role's default) is told from one set to 0 (refused, as in a role's
// configuration).
type testRole struct {
	Name              string            `yaml:"name"`
	Backend           string            `yaml:"backend"`
	TTL               *config.Duration  `yaml:"ttl"`
	MaxTTL            *config.Duration  `yaml:"max_ttl"`
	Labels            map[string]string `yaml:"labels"`
	Scopes            []string          `yaml:"scopes"`
	Audience          []string          `yaml:"audience"`
	ApprovalsRequired int               `yaml:"approvals_required"`
}

type testContext struct {
	TTL       *config.Duration `yaml:"ttl"`
	Reason    string           `yaml:"reason"`
	SourceIP  string           `yaml:"source_ip"`
	Now       *time.Time       `yaml:"now"`
	Risk      int              `yaml:"risk"`
	Approvals int              `yaml:"approvals"`
}

// TestOptions are the server settings a test run decides with.
type TestOptions struct {
	// OnError is policy.on_error; "" means broker.PolicyOnErrorDeny, the
	// server's default.
	OnError broker.PolicyOnError
}

// RunTests loads the policies (the *.cedar files of policyDir) and runs every
// test case in the *.test.yaml files of testDir (non-recursive; policyDir and
// testDir may be the same directory), files in name order. It writes one line
// per case to out, "PASS <name>" or "FAIL <name>: <what differed>", then a
// summary line, and returns the counts. A case fails when its decision,
// its determining policies (expect_policies) or the policies that failed
// to evaluate (expect_errors; none unless listed) differ from what it
// expects; a passing case during which policies failed to evaluate names
// them on its line.
//
// Each case is authorized by the code that decides production requests,
// with opts.OnError as policy.on_error, so a passing case means a server
// with that setting decides the same way.
//
// It returns an error, before running any case, when the policies do not
// load (see Load), when testDir has no *.test.yaml files, or when a test file
// is invalid: unknown keys, a missing name, expect, principal issuer or sub,
// or role name, duplicate case names, or claims that are not JSON-like. The
// message names the file. A case whose expectation does not hold is not an
// error: it counts in failed.
func RunTests(policyDir, testDir string, opts TestOptions, out io.Writer) (passed, failed int, err error) {
	switch opts.OnError {
	case "":
		opts.OnError = broker.PolicyOnErrorDeny
	case broker.PolicyOnErrorDeny, broker.PolicyOnErrorSkip:
	default:
		return 0, 0, fmt.Errorf("on_error must be deny or skip, not %q", opts.OnError)
	}
	set, err := Load(policyDir)
	if err != nil {
		return 0, 0, err
	}
	files, err := readDirFiles("test", testDir, ".test.yaml")
	if err != nil {
		return 0, 0, err
	}
	if len(files) == 0 {
		return 0, 0, fmt.Errorf("test directory %s has no *.test.yaml files", testDir)
	}
	cases, err := parseTestFiles(files)
	if err != nil {
		return 0, 0, err
	}

	w := &stickyWriter{w: out}
	for _, tc := range cases {
		dec, err := set.decide(tc.request(), opts.OnError)
		if err != nil {
			return passed, failed, fmt.Errorf("%s: case %q: %w", tc.file, tc.Name, err)
		}
		if problem := tc.check(dec); problem != "" {
			failed++
			w.printf("FAIL %s: %s\n", tc.Name, problem)
			continue
		}
		passed++
		if len(dec.Errors) > 0 {
			w.printf("PASS %s (policies that failed to evaluate, as expected: [%s])\n", tc.Name, errorList(dec))
			continue
		}
		w.printf("PASS %s\n", tc.Name)
	}
	status := "ok"
	if failed > 0 {
		status = "FAIL"
	}
	w.printf("%s: %d passed, %d failed (policy version %s)\n", status, passed, failed, set.Version())
	return passed, failed, w.err
}

// parseTestFiles strictly decodes and validates the test files, in name
// order, and returns their cases in order.
func parseTestFiles(files map[string][]byte) ([]testCase, error) {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)

	var (
		cases []testCase
		errs  []error
		seen  = map[string]string{} // case name → file
	)
	for _, name := range names {
		var tf testFile
		dec := yaml.NewDecoder(bytes.NewReader(files[name]))
		dec.KnownFields(true)
		if err := dec.Decode(&tf); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("file is empty; it needs a cases: list")
			}
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if err := dec.Decode(new(any)); !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("%s: must be a single YAML document", name))
			continue
		}
		if len(tf.Cases) == 0 {
			errs = append(errs, fmt.Errorf("%s: no test cases; it needs a cases: list", name))
			continue
		}
		for i := range tf.Cases {
			tc := &tf.Cases[i]
			tc.file = name
			if err := tc.validate(); err != nil {
				errs = append(errs, fmt.Errorf("%s: cases[%d]: %w", name, i, err))
				continue
			}
			if other, dup := seen[tc.Name]; dup {
				errs = append(errs, fmt.Errorf("%s: cases[%d]: name %q is also used in %s; names must be unique", name, i, tc.Name, other))
				continue
			}
			seen[tc.Name] = name
			cases = append(cases, *tc)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cases, nil
}

// validate checks the required fields and fills defaults.
func (tc *testCase) validate() error {
	var missing []string
	if tc.Name == "" {
		missing = append(missing, "name")
	}
	if tc.Principal.Issuer == "" {
		missing = append(missing, "principal.issuer")
	}
	if tc.Principal.Sub == "" {
		missing = append(missing, "principal.sub")
	}
	if tc.Role.Name == "" {
		missing = append(missing, "role.name")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s must be set", strings.Join(missing, ", "))
	}
	if tc.Expect != "allow" && tc.Expect != "deny" {
		return fmt.Errorf("case %q: expect must be allow or deny, not %q", tc.Name, tc.Expect)
	}
	// A JSON round trip gives claims exactly the types claims verified from
	// a token have: numbers become float64, timestamps strings.
	if tc.Principal.Claims != nil {
		b, err := json.Marshal(tc.Principal.Claims)
		if err != nil {
			return fmt.Errorf("case %q: principal.claims must be JSON-like (objects with string keys): %w", tc.Name, err)
		}
		if err := json.Unmarshal(b, &tc.claims); err != nil {
			return fmt.Errorf("case %q: principal.claims: %w", tc.Name, err)
		}
	}
	if tc.Action == "" {
		tc.Action = string(broker.ActionMint)
	}
	// The defaults a role's configuration gets, for absent keys only; the
	// values a role's configuration may not have are refused.
	def := config.Defaulted[broker.Role](nil)
	if tc.Role.TTL == nil {
		tc.Role.TTL = &def.TTL
	}
	if tc.Role.MaxTTL == nil {
		maxTTL := max(def.MaxTTL, *tc.Role.TTL)
		tc.Role.MaxTTL = &maxTTL
	}
	if *tc.Role.TTL <= 0 {
		return fmt.Errorf("case %q: role.ttl must be positive; it is %s", tc.Name, *tc.Role.TTL)
	}
	if *tc.Role.MaxTTL < *tc.Role.TTL {
		return fmt.Errorf("case %q: role.max_ttl (%s) must not be less than ttl (%s)", tc.Name, *tc.Role.MaxTTL, *tc.Role.TTL)
	}
	if tc.Context.TTL == nil {
		ttl := *tc.Role.TTL
		tc.Context.TTL = &ttl
	}
	if tc.Context.Now == nil {
		now := defaultTestTime
		tc.Context.Now = &now
	}
	return nil
}

// request builds the authorization request the server would build for a
// validated case.
func (tc *testCase) request() broker.AuthzRequest {
	p := tc.Principal
	r := tc.Role
	return broker.AuthzRequest{
		Principal: &broker.Principal{
			ID:         p.Issuer + "/" + p.Sub,
			Issuer:     p.Issuer,
			IssuerURL:  p.ISS,
			Subject:    p.Sub,
			Claims:     tc.claims,
			Attributes: p.Attributes,
		},
		Action: broker.Action(tc.Action),
		Role: &broker.Role{
			Name:     r.Name,
			Backend:  r.Backend,
			TTL:      *r.TTL,
			MaxTTL:   *r.MaxTTL,
			Audience: r.Audience,
			Scopes:   r.Scopes,
			Labels:   r.Labels,
			Approval: broker.ApprovalConfig{Required: r.ApprovalsRequired},
		},
		Context: broker.AuthzContext{
			TTL:       tc.Context.TTL.D(),
			Reason:    tc.Context.Reason,
			SourceIP:  tc.Context.SourceIP,
			Now:       *tc.Context.Now,
			Risk:      tc.Context.Risk,
			Approvals: tc.Context.Approvals,
		},
	}
}

// check returns "" if dec meets the case's expectations, or what differed.
func (tc *testCase) check(dec broker.Decision) string {
	got := "deny"
	if dec.Allowed {
		got = "allow"
	}
	if got != tc.Expect {
		return fmt.Sprintf("expected %s, got %s (%s; determining: [%s]; errors: [%s])",
			tc.Expect, got, dec.Reason(), strings.Join(dec.PolicyIDs, ", "), errorList(dec))
	}
	if tc.ExpectPolicies != nil {
		want := slices.Sorted(slices.Values(*tc.ExpectPolicies))
		have := slices.Sorted(slices.Values(dec.PolicyIDs))
		if !slices.Equal(want, have) {
			return fmt.Sprintf("%s as expected, but determining policies are [%s], expected [%s] (errors: [%s])",
				got, strings.Join(have, ", "), strings.Join(want, ", "), errorList(dec))
		}
	}
	have := slices.Compact(slices.Sorted(slices.Values(dec.ErroredPolicyIDs())))
	if tc.ExpectErrors == nil && len(have) > 0 {
		return fmt.Sprintf("%s as expected, but policies failed to evaluate that expect_errors does not list: [%s]", got, errorList(dec))
	}
	if want := slices.Compact(slices.Sorted(slices.Values(tc.ExpectErrors))); tc.ExpectErrors != nil && !slices.Equal(want, have) {
		return fmt.Sprintf("%s as expected, but policies that failed to evaluate are [%s], expected [%s] (errors: [%s])",
			got, strings.Join(have, ", "), strings.Join(want, ", "), errorList(dec))
	}
	return ""
}

// errorList formats the evaluation errors of dec as "<id>: <error>; ...".
func errorList(dec broker.Decision) string {
	parts := make([]string, len(dec.Errors))
	for i, e := range dec.Errors {
		parts[i] = e.PolicyID + ": " + e.Message
	}
	return strings.Join(parts, "; ")
}

// stickyWriter remembers the first write error, so the report loop stays
// readable and the error is still returned.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) printf(format string, args ...any) {
	if s.err == nil {
		_, s.err = fmt.Fprintf(s.w, format, args...)
	}
}
