package awstest

//lint:file-ignore ST1005 the errors carry IAM's own messages, worded and punctuated as the service words them

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
)

// iamRole is an IAM role with its inline policies.
type iamRole struct {
	name, arn, id string
	maxSession    time.Duration
	externalID    string            // required by its trust policy, if set
	policies      map[string]string // inline policies by name
	created       time.Time
}

// RoleOptions are the settings of a role CreateRole makes.
type RoleOptions struct {
	// MaxSessionDuration (default 1h, as IAM's).
	MaxSessionDuration time.Duration
	// ExternalID, if set, must be passed by AssumeRole.
	ExternalID string
	// Path is the role's path (default "/").
	Path string
}

// CreateRole adds a role and returns its ARN.
func (s *Server) CreateRole(name string, o RoleOptions) string {
	if o.MaxSessionDuration == 0 {
		o.MaxSessionDuration = time.Hour
	}
	if o.Path == "" {
		o.Path = "/"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &iamRole{
		name: name, arn: "arn:aws:iam::" + s.AccountID + ":role" + o.Path + name, id: "AROA" + randomString(17, upperAlnum),
		maxSession: o.MaxSessionDuration, externalID: o.ExternalID, policies: map[string]string{}, created: s.now(),
	}
	s.roles[name] = r
	return r.arn
}

// PutRolePolicy sets an inline policy of a role as an administrator would
// (no limit checked), e.g. to fill its size budget.
func (s *Server) PutRolePolicy(role, name, doc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles[role].policies[name] = doc
}

// RolePolicy returns an inline policy of a role ("" when it has none).
func (s *Server) RolePolicy(role, name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roles[role].policies[name]
}

// roleByARN finds a role; s.mu is held.
func (s *Server) roleByARN(a string) (*iamRole, error) {
	for _, r := range s.roles {
		if r.arn == a {
			return r, nil
		}
	}
	return nil, errNotFound
}

var policyNamePattern = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)

// roleFor finds the role named in the request; s.mu is held.
func (s *Server) roleFor(f url.Values) (*iamRole, *apiError) {
	name := f.Get("RoleName")
	if !policyNamePattern.MatchString(name) || len(name) > 64 {
		return nil, validationError("1 validation error detected: Value '%s' at 'roleName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+", name)
	}
	r := s.roles[name]
	if r == nil {
		return nil, &apiError{404, "Sender", "NoSuchEntity", fmt.Sprintf("The role with name %s cannot be found.", name)}
	}
	return r, nil
}

// onlyUser refuses sessions for IAM writes: the test's roles hold no IAM
// permissions.
func onlyUser(c caller, action string) *apiError {
	if c.session != nil {
		return accessDenied("User: %s is not authorized to perform: iam:%s", c.session.name, action)
	}
	return nil
}

func (s *Server) getRole(f url.Values) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, aerr := s.roleFor(f)
	if aerr != nil {
		return nil, aerr
	}
	type role struct {
		Path               string `xml:"Path"`
		RoleName           string `xml:"RoleName"`
		RoleID             string `xml:"RoleId"`
		Arn                string `xml:"Arn"`
		CreateDate         string `xml:"CreateDate"`
		MaxSessionDuration int64  `xml:"MaxSessionDuration"`
	}
	path := strings.TrimSuffix(strings.TrimPrefix(r.arn, "arn:aws:iam::"+s.AccountID+":role"), r.name)
	return struct {
		XMLName xml.Name `xml:"GetRoleResult"`
		Role    role     `xml:"Role"`
	}{Role: role{Path: path, RoleName: r.name, RoleID: r.id, Arn: r.arn, CreateDate: r.created.UTC().Format(time.RFC3339),
		MaxSessionDuration: int64(r.maxSession / time.Second)}}, nil
}

func (s *Server) getRolePolicy(f url.Values) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, aerr := s.roleFor(f)
	if aerr != nil {
		return nil, aerr
	}
	name := f.Get("PolicyName")
	doc, ok := r.policies[name]
	if !ok {
		return nil, &apiError{404, "Sender", "NoSuchEntity", fmt.Sprintf("The role policy with name %s cannot be found.", name)}
	}
	return struct {
		XMLName        xml.Name `xml:"GetRolePolicyResult"`
		RoleName       string   `xml:"RoleName"`
		PolicyName     string   `xml:"PolicyName"`
		PolicyDocument string   `xml:"PolicyDocument"`
	}{RoleName: r.name, PolicyName: name, PolicyDocument: url.QueryEscape(doc)}, nil // IAM returns documents URL-encoded
}

func (s *Server) listRolePolicies(f url.Values) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, aerr := s.roleFor(f)
	if aerr != nil {
		return nil, aerr
	}
	var names []string
	for n := range r.policies {
		names = append(names, n)
	}
	sort.Strings(names)
	return struct {
		XMLName     xml.Name `xml:"ListRolePoliciesResult"`
		PolicyNames []string `xml:"PolicyNames>member"`
		IsTruncated bool     `xml:"IsTruncated"`
	}{PolicyNames: names}, nil
}

// maxInlineChars is IAM's limit on all inline policies of a role together,
// whitespace not counted.
const maxInlineChars = 10240

func (s *Server) putRolePolicy(c caller, f url.Values) (any, *apiError) {
	if aerr := onlyUser(c, "PutRolePolicy"); aerr != nil {
		return nil, aerr
	}
	name, doc := f.Get("PolicyName"), f.Get("PolicyDocument")
	if !policyNamePattern.MatchString(name) {
		return nil, validationError("1 validation error detected: Value '%s' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+", name)
	}
	if len(doc) < 1 || len(doc) > 131072 {
		return nil, validationError("1 validation error detected: Value at 'policyDocument' failed to satisfy constraint: Member must have length between 1 and 131072")
	}
	if err := checkPolicyDocument(doc); err != nil {
		return nil, &apiError{400, "Sender", "MalformedPolicyDocument", err.Error()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, aerr := s.roleFor(f)
	if aerr != nil {
		return nil, aerr
	}
	total := nonSpace(doc)
	for n, other := range r.policies {
		if n != name {
			total += nonSpace(other)
		}
	}
	if total > maxInlineChars {
		return nil, &apiError{409, "Sender", "LimitExceeded", fmt.Sprintf("Maximum policy size of %d bytes exceeded for role %s", maxInlineChars, r.name)}
	}
	r.policies[name] = doc
	return nil, nil
}

func (s *Server) deleteRolePolicy(c caller, f url.Values) (any, *apiError) {
	if aerr := onlyUser(c, "DeleteRolePolicy"); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, aerr := s.roleFor(f)
	if aerr != nil {
		return nil, aerr
	}
	name := f.Get("PolicyName")
	if _, ok := r.policies[name]; !ok {
		return nil, &apiError{404, "Sender", "NoSuchEntity", fmt.Sprintf("The role policy with name %s cannot be found.", name)}
	}
	delete(r.policies, name)
	return nil, nil
}

func nonSpace(s string) int {
	n := 0
	for _, r := range s {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

// statement is the part of a policy statement the evaluator reads.
type statement struct {
	Sid       string                    `json:"Sid"`
	Effect    string                    `json:"Effect"`
	Action    json.RawMessage           `json:"Action"`
	NotAction json.RawMessage           `json:"NotAction"`
	Resource  json.RawMessage           `json:"Resource"`
	Condition map[string]map[string]any `json:"Condition"`
}

// statements parses a policy document's statements.
func statements(doc string) ([]statement, error) {
	var d struct {
		Version   string          `json:"Version"`
		Statement json.RawMessage `json:"Statement"`
	}
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		return nil, fmt.Errorf("Syntax errors in policy.")
	}
	if d.Version != "2012-10-17" && d.Version != "2008-10-17" {
		return nil, fmt.Errorf("The policy must have Version 2012-10-17 or 2008-10-17.")
	}
	var list []statement
	if len(d.Statement) > 0 && d.Statement[0] == '{' {
		var one statement
		if err := json.Unmarshal(d.Statement, &one); err != nil {
			return nil, fmt.Errorf("Syntax errors in policy.")
		}
		list = []statement{one}
	} else if err := json.Unmarshal(d.Statement, &list); err != nil {
		return nil, fmt.Errorf("Syntax errors in policy.")
	}
	return list, nil
}

// checkPolicyDocument applies IAM's grammar checks that the evaluator
// relies on.
func checkPolicyDocument(doc string) error {
	list, err := statements(doc)
	if err != nil {
		return err
	}
	if len(list) == 0 {
		return fmt.Errorf("Policy statement must contain actions.")
	}
	for _, st := range list {
		if st.Effect != "Allow" && st.Effect != "Deny" {
			return fmt.Errorf("Policy statement must have Effect Allow or Deny.")
		}
		if len(st.Action) == 0 && len(st.NotAction) == 0 {
			return fmt.Errorf("Policy statement must contain actions.")
		}
		if len(st.Resource) == 0 {
			return fmt.Errorf("Policy statement must contain resources.")
		}
		for op := range st.Condition {
			switch op {
			case "StringEquals", "DateLessThan", "StringLike", "DateGreaterThan", "Bool", "ArnLike", "ArnEquals", "StringNotEquals":
			default:
				return fmt.Errorf("Policy has an invalid condition operator: %s", op)
			}
		}
	}
	return nil
}

// evaluate refuses a session's request when a Deny statement of its role's
// inline policies matches it: Action * (or the action itself), Resource *,
// and every condition true, conditions being StringEquals on
// aws:SourceIdentity and DateLessThan on aws:TokenIssueTime (any other
// condition is false, so such a statement does not deny).
func (s *Server) evaluate(sess *session, action string) *apiError {
	s.mu.Lock()
	docs := make([]string, 0, len(sess.role.policies))
	for _, d := range sess.role.policies {
		docs = append(docs, d)
	}
	s.mu.Unlock()
	for _, doc := range docs {
		list, err := statements(doc)
		if err != nil {
			continue
		}
		for _, st := range list {
			if st.Effect == "Deny" && matches(st.Action, action) && matches(st.Resource, "*") && conditionsHold(st.Condition, sess) {
				return accessDenied("User: arn:aws:sts::%s:assumed-role/%s/%s is not authorized to perform: %s with an explicit deny in an identity-based policy",
					s.AccountID, sess.role.name, sess.name, action)
			}
		}
	}
	return nil
}

// matches reports whether a policy's Action or Resource value (a string or
// a list) holds * or want.
func matches(raw json.RawMessage, want string) bool {
	var list []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		list = []string{one}
	} else if json.Unmarshal(raw, &list) != nil {
		return false
	}
	for _, v := range list {
		if v == "*" || strings.EqualFold(v, want) {
			return true
		}
	}
	return false
}

func conditionsHold(cond map[string]map[string]any, sess *session) bool {
	for op, keys := range cond {
		for key, val := range keys {
			var vals []string
			switch v := val.(type) {
			case string:
				vals = []string{v}
			case []any:
				for _, x := range v {
					if s, ok := x.(string); ok {
						vals = append(vals, s)
					}
				}
			}
			if !conditionHolds(op, key, vals, sess) {
				return false
			}
		}
	}
	return true
}

func conditionHolds(op, key string, vals []string, sess *session) bool {
	switch {
	case op == "StringEquals" && key == "aws:SourceIdentity":
		for _, v := range vals {
			if sess.sourceIdentity != "" && v == sess.sourceIdentity {
				return true
			}
		}
	case op == "DateLessThan" && key == "aws:TokenIssueTime":
		for _, v := range vals {
			if t, err := time.Parse(time.RFC3339, v); err == nil && sess.issued.Before(t) {
				return true
			}
		}
	}
	return false
}
