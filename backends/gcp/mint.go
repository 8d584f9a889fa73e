package gcp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/api/googleapi"
	iamcredentials "google.golang.org/api/iamcredentials/v1"

	"github.com/valet-broker/valet/backends"
)

// Credential detail keys (stored in the lease, shown to operators).
const (
	detailServiceAccount = "service_account"
	detailDelegates      = "delegates"
	detailTokenType      = "token_type"
	detailScopes         = "scopes"
	detailAudience       = "audience"
	detailLifetime       = "lifetime_seconds"
	detailExpiresAt      = "token_expires_at"
)

// Mint asks Google for a token of the role's service account (its
// template filled from the agent's attributes) through the delegation
// chain. An access token gets the role's scopes (narrowed by req.Scope)
// and the whole seconds left of the lease, less one for the request's
// flight: {"access_token", "token_type": "Bearer", "expires_at",
// "service_account", "scopes"}. An ID token is for the role's audience
// and lives Google's hour: {"id_token", "expires_at", "service_account",
// "audience"}. The handle is the lease id: Google has no other name for a
// token. Errors: EFORBIDDEN when the agent lacks an attribute the
// service account needs, or Google refuses an account that came from the
// agent's attributes; EINVALID for a refused scope or a lease with less
// than a second left; EBADGATEWAY when Google refuses the role's
// configuration (valet may not impersonate the account, it does not
// exist, the lifetime is too long); ErrUnavailable when Google cannot be
// reached, is failing or throttles.
func (b *Backend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	cred, sent, err := b.mint(ctx, req)
	if err != nil && !sent {
		b.noteNotIssued(req.CorrelationID)
	}
	return cred, err
}

// mint does Mint's work; on error, sent says whether Google may have
// issued a token valet does not hold.
func (b *Backend) mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, bool, error) {
	r, err := b.role(req.Role.Name)
	if err != nil {
		return nil, false, err
	}
	account, err := r.account(req.Attributes)
	if err != nil {
		return nil, false, err
	}
	scopes, err := r.narrow(req.Scope)
	if err != nil {
		return nil, false, err
	}
	var delegates []string
	for _, d := range r.Delegates {
		delegates = append(delegates, resourceName(d))
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.Timeout.D())
	defer cancel()
	templated := placeholder.MatchString(r.ServiceAccount)
	details := map[string]string{detailServiceAccount: account}
	if len(r.Delegates) > 0 {
		details[detailDelegates] = strings.Join(r.Delegates, ",")
	}
	if r.idToken() {
		details[detailTokenType] = "id_token"
		details[detailAudience] = r.Audience
		resp, err := b.svc.GenerateIdToken(resourceName(account), &iamcredentials.GenerateIdTokenRequest{
			Audience: r.Audience, Delegates: delegates, IncludeEmail: r.IncludeEmail,
		}).Context(ctx).Do()
		received := b.clock.Now()
		if err != nil {
			return nil, !definite(err), b.googleError(err, "an ID token", account, templated)
		}
		if resp.Token == "" {
			return nil, true, errors.New("google answered generateIdToken without a token")
		}
		// Google counts the hour from a moment before valet received its
		// answer: by valet's clock the token is dead by then.
		expires := received.Add(IDTokenLifetime)
		shown := expires
		if exp, ok := jwtExpiry(resp.Token); ok && exp.Before(expires) {
			shown = exp
		}
		details[detailExpiresAt] = ceilSecond(expires).UTC().Format(time.RFC3339)
		return &backends.Credential{
			Handle: req.CorrelationID, ExpiresAt: expires, Details: details,
			Data: map[string]any{
				"id_token": resp.Token, "expires_at": shown.UTC().Format(time.RFC3339),
				"service_account": account, "audience": r.Audience,
			},
		}, false, nil
	}

	// Whole seconds left of the lease, less one for the request's flight:
	// Google counts the lifetime from when it makes the token, a little
	// after valet sends.
	secs := int64(req.ExpiresAt.Sub(b.clock.Now()) / time.Second)
	if secs >= 2 {
		secs--
	}
	if secs < 1 {
		return nil, false, clientError(kindInvalid, "the lease has less than a second left; Google's tokens live whole seconds: ask for a longer ttl")
	}
	secs = min(secs, int64(r.lifetime/time.Second))
	details[detailTokenType] = "access_token"
	details[detailScopes] = strings.Join(scopes, " ")
	details[detailLifetime] = strconv.FormatInt(secs, 10)
	resp, err := b.svc.GenerateAccessToken(resourceName(account), &iamcredentials.GenerateAccessTokenRequest{
		Scope: scopes, Delegates: delegates, Lifetime: strconv.FormatInt(secs, 10) + "s",
	}).Context(ctx).Do()
	received := b.clock.Now()
	if err != nil {
		return nil, !definite(err), b.googleError(err, "an access token", account, templated)
	}
	if resp.AccessToken == "" {
		return nil, true, errors.New("google answered generateAccessToken without an access token")
	}
	expires := received.Add(time.Duration(secs) * time.Second)
	shown := expires
	if exp, err := time.Parse(time.RFC3339, resp.ExpireTime); err == nil && exp.Before(expires) {
		shown = exp
	}
	details[detailExpiresAt] = ceilSecond(expires).UTC().Format(time.RFC3339)
	scopesAny := make([]any, len(scopes))
	for i, s := range scopes {
		scopesAny[i] = s
	}
	return &backends.Credential{
		Handle: req.CorrelationID, ExpiresAt: expires, Details: details,
		Data: map[string]any{
			"access_token": resp.AccessToken, "token_type": "Bearer", "expires_at": shown.UTC().Format(time.RFC3339),
			"service_account": account, "scopes": scopesAny,
		},
	}, false, nil
}

// Revoke cannot end a Google token: Google offers no revocation of
// service-account access or ID tokens. It answers backends.ErrUnrevocable,
// saying why; the token stays valid until its expiry (ref.ValidUntil),
// and its lease says so until then. A lease whose mint Google refused or
// never received holds no token: Revoke returns nil.
func (b *Backend) Revoke(_ context.Context, ref backends.Ref) error {
	if _, none := b.notIssued.Load(ref.CorrelationID); none && ref.Handle == "" {
		return nil
	}
	// A lease recovered from a crash has no details: its role says.
	idToken := ref.Details[detailTokenType] == "id_token"
	if r, err := b.role(ref.Role); ref.Details == nil && err == nil {
		idToken = r.idToken()
	}
	what := "a service account's access tokens"
	if idToken {
		what = "a service account's ID tokens"
	}
	if ref.Handle == "" {
		return fmt.Errorf("%w: an interrupted mint may have made a Google token, and Google can neither list nor revoke %s; if it exists, it expires on its own", backends.ErrUnrevocable, what)
	}
	return fmt.Errorf("%w: Google offers no way to revoke %s before they expire", backends.ErrUnrevocable, what)
}

// noteNotIssued remembers that the mint of lease id made no token, and
// forgets such notes older than an hour (their leases ended long ago).
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

// resourceName is the IAM Credentials name of a service account.
func resourceName(account string) string { return "projects/-/serviceAccounts/" + account }

// ceilSecond rounds t up to a whole second, so that what reads a stored
// expiry never takes a live token for dead.
func ceilSecond(t time.Time) time.Time { return t.Add(time.Second - 1).Truncate(time.Second) }

// jwtExpiry reads the exp claim of a JWT without verifying it (valet only
// shows it; it bounds the token by its own clock).
func jwtExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp <= 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}

// definite reports whether a failed request certainly made no token:
// Google refused it (4xx), or it never left (the connection was refused).
// After a timeout, a reset or a 5xx it cannot be known.
func definite(err error) bool {
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return ge.Code >= 400 && ge.Code < 500
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// googleError classifies a failed request for a token (what) of account:
// Google unreachable, failing or throttling is backends.ErrUnavailable
// (503 to the client, details in the log); a refusal of the role's
// configuration is shown to the client with Google's message (502), or as
// a refusal for this agent (403) when the account came from its
// attributes (templated).
func (b *Backend) googleError(err error, what, account string, templated bool) error {
	if isClientError(err) {
		return err
	}
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		// A transport failure, a timeout, or valet's own token not
		// obtainable right now (the token endpoint or the metadata
		// server unreachable).
		return fmt.Errorf("gcp: request %s of %s: %w: %v", what, account, backends.ErrUnavailable, err)
	}
	msg := ge.Message
	if msg == "" {
		msg = http.StatusText(ge.Code)
	}
	switch {
	case ge.Code == http.StatusTooManyRequests || ge.Code >= 500:
		return fmt.Errorf("gcp: request %s of %s: %w (%d %s)", what, account, backends.ErrUnavailable, ge.Code, msg)
	case ge.Code == http.StatusUnauthorized:
		return clientError(kindBadResponse, "Google refused valet's own credentials (401: %s); check valet's Application Default Credentials", msg)
	case (ge.Code == http.StatusForbidden || ge.Code == http.StatusNotFound) && templated:
		return clientError(kindForbidden, "Google refused valet %s of service account %s, which this agent's attributes name (%d: %s)", what, account, ge.Code, msg)
	case ge.Code == http.StatusForbidden:
		return clientError(kindBadResponse, "Google refused valet %s of service account %s (403: %s); grant valet's identity roles/iam.serviceAccountTokenCreator on it (or on the first of its delegates, each on the next)", what, account, msg)
	case ge.Code == http.StatusNotFound:
		return clientError(kindBadResponse, "Google has no service account %s (404: %s)", account, msg)
	}
	return clientError(kindBadResponse, "Google refused %s of service account %s (%d: %s)", what, account, ge.Code, msg)
}
