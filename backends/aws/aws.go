// Package aws is valet's AWS backend: each credential is an AWS STS
// AssumeRole session of the role's IAM role, named after its lease
// (RoleSessionName and SourceIdentity are the lease id), narrowed by an
// optional session policy and managed policy ARNs, tagged from the agent's
// verified attributes, lasting the lease's TTL (STS's minimum is 900 s).
//
// STS cannot revoke a session. valet revokes one by adding its lease id to a
// valet-managed inline policy of the role that denies every action to
// sessions with that aws:SourceIdentity (see revoke.go); the same statement
// revokes the session of a mint interrupted by a crash, since its
// SourceIdentity was known before the call. IAM applies such a change
// within seconds (eventual consistency): that is the revocation latency.
//
// valet's own AWS identity comes from the standard AWS chain (environment,
// shared config and credentials files, web identity, container and instance
// roles) through aws-sdk-go-v2.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Type is the backend type name in configuration.
const Type = "aws"

// STS's documented limits (AssumeRole API reference).
const (
	// MinSessionDuration is STS's shortest session: DurationSeconds 900.
	MinSessionDuration = 900 * time.Second
	// MaxSessionDuration is STS's longest session (a role's
	// MaxSessionDuration may be lower).
	MaxSessionDuration = 43200 * time.Second
	// MaxSessionPolicyChars bounds the plaintext of the inline session
	// policy.
	MaxSessionPolicyChars = 2048
	// MaxPolicyARNs and MaxSessionTags bound the lists of AssumeRole.
	MaxPolicyARNs  = 10
	MaxSessionTags = 50
	// MaxTagKeyChars and MaxTagValueChars bound one session tag.
	MaxTagKeyChars   = 128
	MaxTagValueChars = 256
)

// Options are the aws backend's configuration keys.
type Options struct {
	// Region is the AWS region of the STS endpoint (default: the chain's,
	// AWS_REGION or the shared config's; one of them is required).
	Region string `yaml:"region"`
	// Endpoint, when set, is the base URL of both STS and IAM (a VPC
	// endpoint, another partition's endpoint, a test server). Without it
	// the SDK resolves the region's endpoints (AWS_ENDPOINT_URL_STS and
	// AWS_ENDPOINT_URL_IAM still apply).
	Endpoint string `yaml:"endpoint"`
	// Profile selects a shared config profile for valet's own credentials
	// (default: AWS_PROFILE, then "default").
	Profile string `yaml:"profile"`
	// Timeout bounds each request to AWS (default 10s; positive).
	Timeout config.Duration `yaml:"timeout"`
	// RevocationPolicy is the name of the inline policy valet manages on
	// each role to deny revoked sessions (default valet-revoked-sessions).
	RevocationPolicy string `yaml:"revocation_policy"`
}

// SetDefaults sets timeout 10s and revocation_policy
// valet-revoked-sessions; New decodes the options on top, so only an absent
// key takes its default.
func (o *Options) SetDefaults() {
	o.Timeout = config.Duration(10 * time.Second)
	o.RevocationPolicy = "valet-revoked-sessions"
}

// RoleParams are a role's aws-specific parameters.
type RoleParams struct {
	// RoleARN is the IAM role whose sessions the role hands out. It must
	// be in the account of valet's own credentials: valet writes the
	// role's revocation policy with them.
	RoleARN string `yaml:"role_arn"`
	// SessionPolicy is an inline session policy (JSON) that narrows the
	// session; {{name}} inside its strings is replaced by the agent's
	// attribute name, {{agent}} by the agent id, {{role}} by the role.
	SessionPolicy string `yaml:"session_policy"`
	// PolicyARNs are managed policies used as session policies (at most
	// 10).
	PolicyARNs []string `yaml:"policy_arns"`
	// SessionTags are session tags, key to a value templated like the
	// session policy (at most 50).
	SessionTags map[string]string `yaml:"session_tags"`
	// TransitiveTagKeys are the session tags that pass on to sessions of
	// roles this session assumes (role chaining).
	TransitiveTagKeys []string `yaml:"transitive_tag_keys"`
	// ExternalID is the external id the role's trust policy requires, if
	// any.
	ExternalID string `yaml:"external_id"`
	// MaxAttributeLength bounds each attribute value put into the session
	// policy or a tag (default 128, 1 to 256), so that the policy's size
	// is known at start-up.
	MaxAttributeLength *int `yaml:"max_attribute_length"`
}

// role is a checked role.
type role struct {
	RoleParams
	arn      arn.ARN
	roleName string // the IAM role name (the ARN's last path segment)
	policy   *template
	tags     []tagTemplate
	maxAttr  int
	// maxSession is the role's MaxSessionDuration when valet could read
	// it, else STS's maximum.
	maxSession time.Duration
}

// Backend hands out STS sessions.
type Backend struct {
	name  string
	opts  Options
	sts   *sts.Client
	iam   *iam.Client
	clock clock.Clock
	log   *slog.Logger
	dir   string // where revocation policies are kept while IAM is written

	roles sync.Map // valet role name -> *role

	account accountOnce

	// notIssued holds the lease ids of mints that STS answered with an
	// error (nothing was issued), so that their pending leases are ended
	// without an IAM write.
	notIssued sync.Map // lease id -> time.Time

	writersMu sync.Mutex
	writers   map[string]*roleWriter // IAM role name -> writer
}

var (
	_ backends.Backend       = (*Backend)(nil)
	_ backends.RoleChecker   = (*Backend)(nil)
	_ backends.FixedLifetime = (*Backend)(nil)
	_ backends.RevokeNoter   = (*Backend)(nil)
)

// CredentialLifetime is the longest session a lease of ttl gets: its TTL,
// but at least STS's minimum of 900 s. A shorter lease's session outlives
// it, and valet revokes it when the lease expires.
func (b *Backend) CredentialLifetime(_ backends.RoleSpec, ttl time.Duration) time.Duration {
	return max(ttl, MinSessionDuration)
}

// New builds an aws backend. It loads valet's AWS configuration (region,
// credentials chain) without contacting AWS.
func New(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	o, err := decodeOptions(options)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if o.Timeout <= 0 {
		return nil, fmt.Errorf("backend %s: timeout must be positive; it is %s", name, o.Timeout)
	}
	if !namePattern.MatchString(o.RevocationPolicy) || len(o.RevocationPolicy) > 128 {
		return nil, fmt.Errorf("backend %s: revocation_policy %q must be an IAM policy name (1 to 128 characters of letters, digits and +=,.@_-)", name, o.RevocationPolicy)
	}
	if o.Endpoint != "" && !strings.HasPrefix(o.Endpoint, "https://") && !strings.HasPrefix(o.Endpoint, "http://") {
		return nil, fmt.Errorf("backend %s: endpoint %q must be an http(s) URL", name, o.Endpoint)
	}
	loadOpts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(o.Timeout.D())),
		// Fail fast: a mint answers 503 while AWS is unreachable, and the
		// revocation queue does its own retrying with backoff.
		awsconfig.WithRetryer(func() awssdk.Retryer { return awssdk.NopRetryer{} }),
	}
	if o.Region != "" {
		loadOpts = append(loadOpts, awsconfig.WithRegion(o.Region))
	}
	if o.Profile != "" {
		loadOpts = append(loadOpts, awsconfig.WithSharedConfigProfile(o.Profile))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("backend %s: load the AWS configuration: %w", name, err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("backend %s: region is required: set region, or AWS_REGION in valet's environment", name)
	}
	b := &Backend{name: name, opts: o, clock: deps.Clock, log: deps.Logger, writers: map[string]*roleWriter{}}
	if b.clock == nil {
		b.clock = clock.Real{}
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.log = b.log.With("backend", name)
	if deps.DataDir != "" {
		b.dir = filepath.Join(deps.DataDir, name, "revocations")
		if err := os.MkdirAll(b.dir, 0o700); err != nil {
			return nil, fmt.Errorf("backend %s: %w", name, err)
		}
	}
	b.sts = sts.NewFromConfig(cfg, func(so *sts.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = awssdk.String(o.Endpoint)
		}
	})
	b.iam = iam.NewFromConfig(cfg, func(io *iam.Options) {
		if o.Endpoint != "" {
			io.BaseEndpoint = awssdk.String(o.Endpoint)
		}
	})
	return b, nil
}

// decodeOptions reads the backend's options on top of their defaults.
func decodeOptions(options map[string]any) (Options, error) {
	var o Options
	o.SetDefaults()
	err := decode(options, &o)
	return o, err
}

// decode strictly decodes options or params into v: unknown keys are
// errors, absent keys keep v's values (its defaults).
func decode(m map[string]any, v any) error { return config.DecodeOptions(m, v) }

// errorKind is what a failure the client is told about means to it.
type errorKind int

const (
	// kindInvalid: the request cannot be served as asked (400).
	kindInvalid errorKind = iota
	// kindForbidden: not for this agent (its attributes) (403).
	kindForbidden
	// kindBadResponse: AWS refused what the role's configuration asks
	// (502).
	kindBadResponse
)

// clientError is a failure whose message the client reads: the one place
// the backend's error kinds become valet's error codes.
func clientError(kind errorKind, format string, args ...any) error {
	k := map[errorKind]error{kindInvalid: backends.ErrInvalid, kindForbidden: backends.ErrForbidden, kindBadResponse: backends.ErrBadResponse}[kind]
	return backends.Errorf(k, format, args...)
}

// isClientError reports whether err is already a clientError.
func isClientError(err error) bool {
	var be *backends.Error
	return errors.As(err, &be)
}

var (
	// namePattern is IAM's and STS's [\w+=,.@-]+ (role session names,
	// source identities, policy names).
	namePattern = regexp.MustCompile(`^[\w+=,.@-]+$`)
	// externalIDPattern is STS's [\w+=,.@:\/-]*.
	externalIDPattern = regexp.MustCompile(`^[\w+=,.@:/-]+$`)
)

// CheckRole validates a role's params at start-up and, when AWS can be
// reached, that the role is in the account of valet's own credentials and
// that its MaxSessionDuration allows the role's max_ttl.
func (b *Backend) CheckRole(r backends.RoleSpec) error {
	ro, err := parseRole(r)
	if err != nil {
		return err
	}
	if r.TTL < MinSessionDuration {
		b.log.Info("leases of this role are shorter than STS's 15-minute minimum: each gets a 15-minute session, revoked at the lease's expiry through the role's revocation policy (one IAM write per lease)",
			"role", r.Name, "ttl", r.TTL)
	}
	if err := b.checkAtAWS(r, ro); err != nil {
		return err
	}
	b.roles.Store(r.Name, ro)
	return nil
}

// parseRole checks a role's params without AWS.
func parseRole(r backends.RoleSpec) (*role, error) {
	var p RoleParams
	if err := decode(r.Params, &p); err != nil {
		return nil, fmt.Errorf("params: %w", err)
	}
	ro := &role{RoleParams: p, maxAttr: 128, maxSession: MaxSessionDuration}
	if p.MaxAttributeLength != nil {
		ro.maxAttr = *p.MaxAttributeLength
		if ro.maxAttr < 1 || ro.maxAttr > MaxTagValueChars {
			return nil, fmt.Errorf("params.max_attribute_length must be between 1 and %d; it is %d", MaxTagValueChars, ro.maxAttr)
		}
	}
	if p.RoleARN == "" {
		return nil, errors.New("params.role_arn is required: the IAM role whose sessions this role hands out")
	}
	a, err := arn.Parse(p.RoleARN)
	if err != nil || a.Service != "iam" || !strings.HasPrefix(a.Resource, "role/") || len(p.RoleARN) < 20 || len(p.RoleARN) > 2048 {
		return nil, fmt.Errorf("params.role_arn %q is not an IAM role ARN such as arn:aws:iam::123456789012:role/agents", p.RoleARN)
	}
	ro.arn = a
	ro.roleName = a.Resource[strings.LastIndex(a.Resource, "/")+1:]
	if !namePattern.MatchString(ro.roleName) || len(ro.roleName) > 64 {
		return nil, fmt.Errorf("params.role_arn %q does not end in a valid IAM role name", p.RoleARN)
	}
	if r.MaxTTL > MaxSessionDuration {
		return nil, fmt.Errorf("max_ttl %s is longer than STS's longest session (%s)", r.MaxTTL, MaxSessionDuration)
	}
	if p.SessionPolicy != "" {
		if ro.policy, err = parsePolicyTemplate(p.SessionPolicy, ro.maxAttr); err != nil {
			return nil, fmt.Errorf("params.session_policy: %w", err)
		}
	}
	if len(p.PolicyARNs) > MaxPolicyARNs {
		return nil, fmt.Errorf("params.policy_arns has %d entries; STS takes at most %d", len(p.PolicyARNs), MaxPolicyARNs)
	}
	for i, s := range p.PolicyARNs {
		pa, err := arn.Parse(s)
		if err != nil || pa.Service != "iam" || !strings.HasPrefix(pa.Resource, "policy/") || len(s) < 20 || len(s) > 2048 {
			return nil, fmt.Errorf("params.policy_arns[%d] %q is not an IAM policy ARN such as arn:aws:iam::aws:policy/ReadOnlyAccess", i, s)
		}
	}
	if ro.tags, err = parseTagTemplates(p.SessionTags, p.TransitiveTagKeys, ro.maxAttr); err != nil {
		return nil, err
	}
	if p.ExternalID != "" && (len(p.ExternalID) < 2 || len(p.ExternalID) > 1224 || !externalIDPattern.MatchString(p.ExternalID)) {
		return nil, errors.New("params.external_id must be 2 to 1224 characters of letters, digits and +=,.@:/_-")
	}
	return ro, nil
}

// checkAtAWS refuses, when AWS answers within 5 s, a role in another account
// than valet's credentials (valet could not write its revocation policy), a
// role IAM does not have, and a max_ttl above the role's
// MaxSessionDuration. When AWS cannot answer it logs a warning and lets
// valet start: the account is checked again before each revocation, and
// STS refuses a session longer than the role allows.
func (b *Backend) checkAtAWS(r backends.RoleSpec, ro *role) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	acct, err := b.account.get(ctx, b)
	if err != nil {
		b.log.Warn("cannot read valet's own AWS identity to check the role now; it is checked before each revocation", "role", r.Name, "err", err)
		return nil
	}
	if acct != ro.arn.AccountID {
		return fmt.Errorf("params.role_arn %s is in account %s, but valet's AWS credentials are of account %s: valet revokes sessions by writing the role's inline policy, which it can do only in its own account",
			ro.RoleARN, ro.arn.AccountID, acct)
	}
	out, err := b.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: awssdk.String(ro.roleName)})
	if err != nil {
		if apiErrorCode(err) == "NoSuchEntity" {
			return fmt.Errorf("params.role_arn: IAM has no role %s in account %s", ro.roleName, acct)
		}
		b.log.Warn("cannot read the IAM role to check its MaxSessionDuration (needs iam:GetRole)", "role", r.Name, "iam_role", ro.roleName, "err", b.awsError(err, "get role"))
		return nil
	}
	if out.Role == nil {
		return nil
	}
	if out.Role.Arn != nil && *out.Role.Arn != ro.RoleARN {
		return fmt.Errorf("params.role_arn is %s, but IAM's role %s is %s", ro.RoleARN, ro.roleName, *out.Role.Arn)
	}
	if ms := out.Role.MaxSessionDuration; ms != nil && *ms > 0 {
		ro.maxSession = time.Duration(*ms) * time.Second
		if r.MaxTTL > ro.maxSession {
			return fmt.Errorf("max_ttl %s is longer than IAM role %s allows its sessions (MaxSessionDuration %s); lower max_ttl or raise the role's MaxSessionDuration",
				r.MaxTTL, ro.roleName, ro.maxSession)
		}
	}
	return nil
}

// accountOnce caches the account of valet's own AWS credentials.
type accountOnce struct {
	mu sync.Mutex
	id string
}

// get returns the account, asking STS (GetCallerIdentity) until it knows.
func (a *accountOnce) get(ctx context.Context, b *Backend) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.id != "" {
		return a.id, nil
	}
	out, err := b.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return "", b.awsError(err, "get caller identity")
	}
	if out.Account == nil || *out.Account == "" {
		return "", errors.New("sts answered GetCallerIdentity without an account")
	}
	a.id = *out.Account
	return a.id, nil
}

func (b *Backend) role(name string) (*role, error) {
	r, ok := b.roles.Load(name)
	if !ok {
		return nil, fmt.Errorf("role %s was not checked by backend %s", name, b.name)
	}
	return r.(*role), nil
}

// Credential detail keys (stored in the lease, shown to operators).
const (
	detailRoleARN          = "role_arn"
	detailAssumedRoleID    = "assumed_role_id"
	detailSessionExpiresAt = "session_expires_at"
	detailDuration         = "duration_seconds"
	detailPackedPolicySize = "packed_policy_size"
)

// Mint assumes the role for req: RoleSessionName and SourceIdentity are
// the lease id, DurationSeconds the whole seconds left of the lease (at
// least STS's 900).
func (b *Backend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	ro, err := b.role(req.Role.Name)
	if err != nil {
		return nil, err
	}
	if len(req.Scope) > 0 {
		return nil, clientError(kindInvalid, "the aws backend does not narrow credentials by scope")
	}
	in, err := b.assumeRoleInput(ro, req)
	if err != nil {
		b.noteNotIssued(req.CorrelationID)
		return nil, err
	}
	out, err := b.sts.AssumeRole(ctx, in)
	received := b.clock.Now()
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			// STS answered: no session was created.
			b.noteNotIssued(req.CorrelationID)
		}
		return nil, b.awsError(err, "assume role "+ro.RoleARN)
	}
	c := out.Credentials
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.SessionToken == nil || c.Expiration == nil {
		return nil, errors.New("sts answered AssumeRole without credentials")
	}
	if out.SourceIdentity != nil && *out.SourceIdentity != req.CorrelationID {
		// The session could not be revoked by its lease id.
		return nil, fmt.Errorf("sts answered AssumeRole with source identity %q, not the lease id", *out.SourceIdentity)
	}
	// valet's clock bounds the session's end: STS counts DurationSeconds
	// from a moment before valet received its answer.
	duration := time.Duration(*in.DurationSeconds) * time.Second
	expires := received.Add(duration)
	details := map[string]string{
		detailRoleARN: ro.RoleARN, detailDuration: fmt.Sprint(*in.DurationSeconds),
		detailSessionExpiresAt: expires.UTC().Format(time.RFC3339),
	}
	handle := req.CorrelationID
	if u := out.AssumedRoleUser; u != nil && u.Arn != nil {
		handle = *u.Arn
		if u.AssumedRoleId != nil {
			details[detailAssumedRoleID] = *u.AssumedRoleId
		}
	}
	//lint:ignore SA1019 STS still answers PackedPolicySize for AssumeRole; it is what its size limit is measured in
	if packed := out.PackedPolicySize; packed != nil {
		details[detailPackedPolicySize] = fmt.Sprintf("%d%%", *packed)
		if *packed >= 90 {
			b.log.Warn("the role's session policy and tags are close to STS's packed size limit", "role", req.Role.Name, "packed_policy_size_percent", *packed)
		}
	}
	return &backends.Credential{
		Handle:    handle,
		ExpiresAt: expires,
		Data: map[string]any{
			"access_key_id":     *c.AccessKeyId,
			"secret_access_key": *c.SecretAccessKey,
			"session_token":     *c.SessionToken,
			"expiration":        c.Expiration.UTC().Format(time.RFC3339),
		},
		Details: details,
	}, nil
}

// assumeRoleInput builds the AssumeRole request of req.
func (b *Backend) assumeRoleInput(ro *role, req backends.MintRequest) (*sts.AssumeRoleInput, error) {
	if !namePattern.MatchString(req.CorrelationID) || len(req.CorrelationID) < 2 || len(req.CorrelationID) > 64 || strings.HasPrefix(req.CorrelationID, "aws:") {
		return nil, fmt.Errorf("lease id %q cannot be an STS session name", req.CorrelationID)
	}
	vars := templateVars{attrs: req.Attributes, agent: req.AgentID, role: req.Role.Name}
	in := &sts.AssumeRoleInput{
		RoleArn:         awssdk.String(ro.RoleARN),
		RoleSessionName: awssdk.String(req.CorrelationID),
		SourceIdentity:  awssdk.String(req.CorrelationID),
	}
	// Whole seconds left, minus one for the request's flight: STS counts
	// from when it creates the session, a little after valet sends.
	secs := int64(req.ExpiresAt.Sub(b.clock.Now())/time.Second) - 1
	secs = max(secs, int64(MinSessionDuration/time.Second))
	if limit := int64(ro.maxSession / time.Second); secs > limit {
		return nil, clientError(kindInvalid, "role %s hands out AWS sessions of at most %s (the IAM role's MaxSessionDuration); ask for a shorter ttl", req.Role.Name, ro.maxSession)
	}
	in.DurationSeconds = awssdk.Int32(int32(secs))
	if ro.policy != nil {
		p, err := ro.policy.expand(vars, "session_policy")
		if err != nil {
			return nil, err
		}
		in.Policy = awssdk.String(p)
	}
	for _, a := range ro.PolicyARNs {
		in.PolicyArns = append(in.PolicyArns, ststypes.PolicyDescriptorType{Arn: awssdk.String(a)})
	}
	for _, t := range ro.tags {
		v, err := t.value.expandTag(vars, t.key)
		if err != nil {
			return nil, err
		}
		in.Tags = append(in.Tags, ststypes.Tag{Key: awssdk.String(t.key), Value: awssdk.String(v)})
	}
	in.TransitiveTagKeys = append(in.TransitiveTagKeys, ro.TransitiveTagKeys...)
	if ro.ExternalID != "" {
		in.ExternalId = awssdk.String(ro.ExternalID)
	}
	return in, nil
}

// noteNotIssued remembers that the mint of lease id created nothing, and
// forgets such notes older than an hour (their leases were ended long ago).
func (b *Backend) noteNotIssued(id string) {
	now := b.clock.Now()
	b.notIssued.Store(id, now)
	b.notIssued.Range(func(k, v any) bool {
		if now.Sub(v.(time.Time)) > time.Hour {
			b.notIssued.Delete(k)
		}
		return true
	})
}

// awsError classifies an AWS failure: unreachable, throttled or failing
// on AWS's side is backends.ErrUnavailable (503 to the client); anything
// else is a backend error whose details go to the log, except a session
// STS finds too large, which the client is told about.
func (b *Backend) awsError(err error, what string) error {
	if isClientError(err) {
		return err
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		var re *awshttp.ResponseError
		status := 0
		if errors.As(err, &re) {
			status = re.HTTPStatusCode()
		}
		switch {
		case status >= 500, code == "Throttling", code == "ThrottlingException", code == "RequestLimitExceeded",
			code == "ServiceUnavailable", code == "InternalFailure", code == "ServiceFailure", code == "IDPCommunicationError":
			return fmt.Errorf("aws %s: %w (%s: %s)", what, backends.ErrUnavailable, code, ae.ErrorMessage())
		case code == "PackedPolicyTooLarge":
			return clientError(kindBadResponse, "AWS STS refused the session: the role's session policy, policy ARNs and session tags (with this agent's attributes) pack to more than STS allows; the role's configuration must be made smaller")
		}
		return fmt.Errorf("aws %s: %s: %s", what, code, ae.ErrorMessage())
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("aws %s: %w: %w", what, backends.ErrUnavailable, err)
	}
	// Anything else is a transport failure (connection refused, DNS,
	// TLS) or valet's own credentials being unobtainable right now (the
	// instance metadata service or STS web identity unreachable).
	return fmt.Errorf("aws %s: %w: %v", what, backends.ErrUnavailable, err)
}

// apiErrorCode returns the AWS error code of err, or "".
func apiErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
