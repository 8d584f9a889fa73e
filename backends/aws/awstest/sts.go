package awstest

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// session is an STS session the server issued. It holds its secret and
// token, as STS does, to verify the requests signed with them.
type session struct {
	accessKeyID, secret, token string
	role                       *iamRole
	name                       string // RoleSessionName
	sourceIdentity             string
	issued, expires            time.Time
	tags                       map[string]string
	policy                     string
}

// Session is what a test may read about an issued session (no secret).
type Session struct {
	AccessKeyID    string
	RoleName       string
	SessionName    string
	SourceIdentity string
	Issued         time.Time
	Expires        time.Time
	Tags           map[string]string
	Policy         string
}

// Sessions returns the sessions issued with this source identity.
func (s *Server) Sessions(sourceIdentity string) []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Session
	for _, x := range s.sessions {
		if x.sourceIdentity == sourceIdentity {
			out = append(out, Session{AccessKeyID: x.accessKeyID, RoleName: x.role.name, SessionName: x.name, SourceIdentity: x.sourceIdentity,
				Issued: x.issued, Expires: x.expires, Tags: x.tags, Policy: x.policy})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Issued.Before(out[j].Issued) })
	return out
}

// STS's documented limits.
var (
	sessionNamePattern = regexp.MustCompile(`^[\w+=,.@-]*$`)
	externalIDPattern  = regexp.MustCompile(`^[\w+=,.@:/-]*$`)
	tagPattern         = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$`)
	policyPattern      = regexp.MustCompile("^[\t\n\r\u0020-\u00ff]+$")
)

// packedLimit is this server's model of STS's packed size limit: the
// deflated session policy, policy ARNs and tags may take up to this many
// bytes. (STS's packing is not documented; it only reports the size as a
// percentage, PackedPolicySize.)
const packedLimit = 1024

// assumeRole implements sts:AssumeRole.
func (s *Server) assumeRole(c caller, f url.Values) (any, *apiError) {
	var errs []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	roleArn, name := f.Get("RoleArn"), f.Get("RoleSessionName")
	check(len(roleArn) >= 20 && len(roleArn) <= 2048, "Value '%s' at 'roleArn' failed to satisfy constraint: Member must have length between 20 and 2048", roleArn)
	check(len(name) >= 2 && len(name) <= 64, "Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64", name)
	check(sessionNamePattern.MatchString(name), "Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", name)
	duration := int64(3600)
	if v := f.Get("DurationSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		check(err == nil, "Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must be an integer", v)
		check(err != nil || n >= 900, "Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900", v)
		check(err != nil || n <= 43200, "Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200", v)
		duration = n
	}
	source := f.Get("SourceIdentity")
	if _, set := f["SourceIdentity"]; set {
		check(len(source) >= 2 && len(source) <= 64, "Value '%s' at 'sourceIdentity' failed to satisfy constraint: Member must have length between 2 and 64", source)
		check(sessionNamePattern.MatchString(source), "Value '%s' at 'sourceIdentity' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", source)
	}
	if ext, set := f["ExternalId"]; set {
		check(len(ext[0]) >= 2 && len(ext[0]) <= 1224 && externalIDPattern.MatchString(ext[0]),
			"Value '%s' at 'externalId' failed to satisfy constraint: Member must have length between 2 and 1224 and satisfy regular expression pattern: [\\w+=,.@:\\/-]*", ext[0])
	}
	policy := f.Get("Policy")
	if _, set := f["Policy"]; set {
		check(len(policy) <= 2048, "Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048")
		check(policyPattern.MatchString(policy), "Value at 'policy' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\u0009\\u000A\\u000D\\u0020-\\u00FF]+")
	}
	arns := members(f, "PolicyArns.member.", ".arn")
	check(len(arns) <= 10, "Value at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to 10")
	for _, a := range arns {
		check(len(a) >= 20 && len(a) <= 2048, "Value '%s' at 'policyArns' failed to satisfy constraint: Member must have length between 20 and 2048", a)
	}
	keys := members(f, "Tags.member.", ".Key")
	values := members(f, "Tags.member.", ".Value")
	check(len(keys) <= 50, "Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50")
	check(len(keys) == len(values), "every tag needs a Key and a Value")
	for i, k := range keys {
		check(len([]rune(k)) >= 1 && len([]rune(k)) <= 128 && tagPattern.MatchString(k),
			"Value '%s' at 'tags.%d.member.key' failed to satisfy constraint: Member must have length between 1 and 128 and satisfy regular expression pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]+", k, i+1)
		if i < len(values) {
			check(len([]rune(values[i])) <= 256 && tagPattern.MatchString(values[i]),
				"Value '%s' at 'tags.%d.member.value' failed to satisfy constraint: Member must have length less than or equal to 256 and satisfy regular expression pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*", values[i], i+1)
		}
	}
	transitive := members(f, "TransitiveTagKeys.member.", "")
	check(len(transitive) <= 50, "Value at 'transitiveTagKeys' failed to satisfy constraint: Member must have length less than or equal to 50")
	if len(errs) > 0 {
		return nil, validationError("%d validation error%s detected: %s", len(errs), plural(len(errs)), strings.Join(errs, "; "))
	}
	if strings.HasPrefix(strings.ToLower(source), "aws:") {
		return nil, validationError("SourceIdentity cannot begin with the reserved prefix aws:")
	}
	tags := map[string]string{}
	lower := map[string]bool{}
	for i, k := range keys {
		if lower[strings.ToLower(k)] {
			return nil, validationError("Duplicate tag keys found. Please note that Tag keys are case insensitive.")
		}
		lower[strings.ToLower(k)] = true
		tags[k] = values[i]
	}
	for _, k := range transitive {
		if _, ok := tags[k]; !ok {
			return nil, validationError("The transitive tag key %s is not among the session tags of the request.", k)
		}
	}
	if policy != "" {
		var doc map[string]any
		if err := json.Unmarshal([]byte(policy), &doc); err != nil || doc["Statement"] == nil {
			return nil, &apiError{400, "Sender", "MalformedPolicyDocument", "The policy is not in the valid JSON format."}
		}
	}
	packed := packedSize(policy, arns, keys, values)
	if packed > packedLimit {
		return nil, &apiError{400, "Sender", "PackedPolicyTooLarge",
			fmt.Sprintf("Packed size of the policies, policy ARNs and session tags exceeds the limit: %d%% of the allowed size.", packed*100/packedLimit)}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	role, err := s.roleByARN(roleArn)
	who := s.UserARN
	if c.session != nil {
		who = "arn:aws:sts::" + s.AccountID + ":assumed-role/" + c.session.role.name + "/" + c.session.name
	}
	if err != nil {
		return nil, accessDenied("User: %s is not authorized to perform: sts:AssumeRole on resource: %s", who, roleArn)
	}
	if ext := role.externalID; ext != "" && f.Get("ExternalId") != ext {
		return nil, accessDenied("User: %s is not authorized to perform: sts:AssumeRole on resource: %s", who, roleArn)
	}
	if c.session != nil {
		// Role chaining: at most an hour, and the source identity
		// carries over and cannot change.
		if duration > 3600 {
			return nil, validationError("The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.")
		}
		if prev := c.session.sourceIdentity; prev != "" {
			if source != "" && source != prev {
				return nil, accessDenied("User: %s is not authorized to perform: sts:SetSourceIdentity: the source identity %s of a session cannot change", who, prev)
			}
			source = prev
		}
	}
	if time.Duration(duration)*time.Second > role.maxSession {
		return nil, validationError("The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
	}
	now := s.now()
	sess := &session{
		accessKeyID: "ASIA" + randomString(16, upperAlnum), secret: randomString(40, secretChars),
		token: "FwoGZXIvYXdzE" + randomString(300, secretChars),
		role:  role, name: name, sourceIdentity: source, tags: tags, policy: policy,
		issued: now, expires: now.Add(time.Duration(duration) * time.Second).Truncate(time.Second),
	}
	s.sessions[sess.accessKeyID] = sess
	type assumedRoleUser struct {
		Arn           string `xml:"Arn"`
		AssumedRoleID string `xml:"AssumedRoleId"`
	}
	type credentials struct {
		AccessKeyID     string `xml:"AccessKeyId"`
		SecretAccessKey string `xml:"SecretAccessKey"`
		SessionToken    string `xml:"SessionToken"`
		Expiration      string `xml:"Expiration"`
	}
	out := struct {
		XMLName          xml.Name        `xml:"AssumeRoleResult"`
		SourceIdentity   string          `xml:"SourceIdentity,omitempty"`
		AssumedRoleUser  assumedRoleUser `xml:"AssumedRoleUser"`
		Credentials      credentials     `xml:"Credentials"`
		PackedPolicySize int             `xml:"PackedPolicySize"`
	}{
		SourceIdentity:   source,
		AssumedRoleUser:  assumedRoleUser{Arn: "arn:aws:sts::" + s.AccountID + ":assumed-role/" + role.name + "/" + name, AssumedRoleID: role.id + ":" + name},
		Credentials:      credentials{sess.accessKeyID, sess.secret, sess.token, sess.expires.UTC().Format(time.RFC3339)},
		PackedPolicySize: packed * 100 / packedLimit,
	}
	return out, nil
}

// getCallerIdentity implements sts:GetCallerIdentity.
func (s *Server) getCallerIdentity(c caller) (any, *apiError) {
	out := struct {
		XMLName xml.Name `xml:"GetCallerIdentityResult"`
		Arn     string   `xml:"Arn"`
		UserID  string   `xml:"UserId"`
		Account string   `xml:"Account"`
	}{Arn: s.UserARN, UserID: "AIDA" + strings.Repeat("X", 17), Account: s.AccountID}
	if c.session != nil {
		out.Arn = "arn:aws:sts::" + s.AccountID + ":assumed-role/" + c.session.role.name + "/" + c.session.name
		out.UserID = c.session.role.id + ":" + c.session.name
	}
	return out, nil
}

// members returns the values of prefix<n>suffix for n = 1, 2, ... until
// one is missing (the Query protocol's lists).
func members(f url.Values, prefix, suffix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := f[prefix+strconv.Itoa(i)+suffix]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

// packedSize models STS's packing: the deflated policy, ARNs and tags.
func packedSize(policy string, arns, keys, values []string) int {
	if policy == "" && len(arns) == 0 && len(keys) == 0 {
		return 0
	}
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write([]byte(policy))
	for _, a := range arns {
		w.Write([]byte(a))
	}
	for i := range keys {
		w.Write([]byte(keys[i] + "=" + values[i]))
	}
	w.Close()
	return buf.Len()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
