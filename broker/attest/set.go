package attest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// This file verifies Security Event Tokens (RFC 8417) pushed to valet by
// Shared Signals transmitters (RFC 8935), by the rules attestations follow
// (RFC 8725: compact JWS only, the transmitter chosen by iss and only its
// keys, an allow-list of asymmetric algorithms, jku, x5u, jwk and x5c
// never read, crit and b64:false refused, a size limit before parsing)
// and those of SETs: typ secevent+jwt (RFC 8417 section 2.3), an aud of
// valet's, iat required and recent, an events claim, and a jti consumed
// once (replay).

// SET defaults and bounds.
const (
	// DefaultSETMaxAge is how old a SET's iat may be by default; its jti
	// is remembered that long.
	DefaultSETMaxAge = time.Hour
	// MaxSETMaxAge bounds max_age: every jti is remembered that long.
	MaxSETMaxAge = 7 * 24 * time.Hour
	// setType is the typ of a SET (RFC 8417 section 2.3).
	setType = "secevent+jwt"
)

// TransmitterConfig is an SSF transmitter whose SETs valet accepts
// (signals.transmitters[]).
type TransmitterConfig struct {
	Name string `yaml:"name"`
	// Issuer is the exact iss of its SETs.
	Issuer string `yaml:"issuer"`
	// Audiences: a SET's aud must name one of them (default: valet's
	// public_url).
	Audiences []string `yaml:"audiences"`
	// Exactly one of JWKSFile and JWKSURL holds its signing keys; CAFile
	// verifies JWKSURL's TLS certificate.
	JWKSFile string `yaml:"jwks_file"`
	JWKSURL  string `yaml:"jwks_url"`
	CAFile   string `yaml:"ca_file"`
	// Algorithms allowed (default RS256 and ES256; asymmetric only).
	Algorithms []string `yaml:"algorithms"`
	// ClockSkew tolerated on iat and exp (default 30s, at most 5m; 0
	// tolerates none).
	ClockSkew config.Duration `yaml:"clock_skew"`
	// MaxAge is how old a SET's iat may be (default 1h, 1m to 7 days); its
	// jti is remembered that long, so a SET is accepted once.
	MaxAge config.Duration `yaml:"max_age"`
	// EmailIssuer names an attestation issuer (issuers[]) whose agents'
	// subjects are email addresses: an email subject identifier then names
	// the agent "<email_issuer>/<email>". Without it, email subjects are
	// ignored.
	EmailIssuer string `yaml:"email_issuer"`
	// AllowedActions and Actions say what its events may make valet do.
	broker.SignalPolicy `yaml:",inline"`
}

// SetDefaults sets algorithms [RS256, ES256], clock_skew 30s, max_age 1h
// and every action allowed.
func (tc *TransmitterConfig) SetDefaults() {
	tc.Algorithms = []string{"RS256", "ES256"}
	tc.ClockSkew = config.Duration(DefaultClockSkew)
	tc.MaxAge = config.Duration(DefaultSETMaxAge)
	tc.SignalPolicy.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (tc *TransmitterConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type transmitter TransmitterConfig
	return config.DecodeOnDefaults(tc.SetDefaults, (*transmitter)(tc), unmarshal)
}

// ValidateTransmitters checks signals.transmitters and names the full key
// path in each error. agentIssuers are the names of issuers[].
func ValidateTransmitters(ts []TransmitterConfig, agentIssuers map[string]bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names, isses := map[string]bool{}, map[string]bool{}
	for i, tc := range ts {
		f := fmt.Sprintf("signals.transmitters[%d]", i)
		errs = append(errs, config.CheckName(f+".name", tc.Name, names)...)
		switch {
		case tc.Issuer == "":
			add("%s.issuer must be set (the exact iss of its SETs)", f)
		case strings.ContainsRune(tc.Issuer, '#') || strings.IndexFunc(tc.Issuer, unicode.IsControl) >= 0:
			add("%s.issuer %q must not contain '#' or control characters", f, tc.Issuer)
		case isses[tc.Issuer]:
			add("%s.issuer %q is trusted twice; each iss must map to one transmitter", f, tc.Issuer)
		}
		isses[tc.Issuer] = true
		if tc.Audiences != nil && len(tc.Audiences) == 0 {
			add("%s.audiences must not be empty; leave it out for valet's public_url", f)
		}
		for j, a := range tc.Audiences {
			if a == "" {
				add("%s.audiences[%d] must not be empty", f, j)
			}
		}
		if (tc.JWKSFile == "") == (tc.JWKSURL == "") {
			add("%s needs exactly one of jwks_file or jwks_url", f)
		}
		if tc.JWKSURL != "" {
			if u, err := url.Parse(tc.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				add("%s.jwks_url %q must be an absolute http(s) URL", f, tc.JWKSURL)
			}
		}
		if tc.CAFile != "" && tc.JWKSURL == "" {
			add("%s.ca_file applies only with jwks_url", f)
		}
		if len(tc.Algorithms) == 0 {
			add("%s.algorithms must not be empty", f)
		}
		for j, a := range tc.Algorithms {
			if !broker.AllowedAlgorithm(a) {
				add("%s.algorithms[%d] %q is not allowed; use RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA", f, j, a)
			}
		}
		if tc.ClockSkew < 0 || tc.ClockSkew.D() > MaxClockSkew {
			add("%s.clock_skew must be between 0 and %s; it is %s", f, MaxClockSkew, tc.ClockSkew)
		}
		if tc.MaxAge < config.Duration(time.Minute) || tc.MaxAge.D() > MaxSETMaxAge {
			add("%s.max_age must be between 1m and %s (each SET's jti is remembered that long); it is %s", f, MaxSETMaxAge, tc.MaxAge)
		}
		if tc.EmailIssuer != "" && !agentIssuers[tc.EmailIssuer] {
			add("%s.email_issuer %q is not one of issuers", f, tc.EmailIssuer)
		}
		errs = append(errs, tc.SignalPolicy.Validate(f))
	}
	return errors.Join(errs...)
}

// setIssuerPrefix starts the names of the transmitters' issuers, which no
// attestation issuer can have, so their jti values never collide in the
// replay cache.
const setIssuerPrefix = "ssf:"

// issuerConfig is the transmitter as a trusted issuer of the Verifier
// that checks its signatures; publicURL is the default audience.
func (tc TransmitterConfig) issuerConfig(publicURL string) IssuerConfig {
	return config.Defaulted(func(ic *IssuerConfig) {
		ic.Name, ic.Issuer = setIssuerPrefix+tc.Name, tc.Issuer
		ic.Audiences = tc.Audiences
		if ic.Audiences == nil {
			ic.Audiences = []string{publicURL}
		}
		ic.JWKSFile, ic.JWKSURL, ic.CAFile, ic.Algorithms = tc.JWKSFile, tc.JWKSURL, tc.CAFile, tc.Algorithms
		ic.ClockSkew, ic.MaxTokenAge = tc.ClockSkew, tc.MaxAge
	})
}

// SETOptions configures a SETVerifier.
type SETOptions struct {
	// Transmitters are signals.transmitters, as validated by
	// ValidateTransmitters.
	Transmitters []TransmitterConfig
	// PublicURL is valet's public URL, the default audience.
	PublicURL string
	// The rest is as for Options: MaxTokenBytes (positive), the replay
	// cache (required), clock, HTTP client and logger.
	MaxTokenBytes int
	Replay        ReplayCache
	Options       Options
}

// SETVerifier verifies SETs of the configured transmitters
// (broker.SETVerifier).
type SETVerifier struct {
	v            *Verifier
	transmitters map[string]*transmitter // by issuer name (setIssuerPrefix + name)
}

type transmitter struct {
	src         *broker.SignalSource
	emailIssuer string
}

var _ broker.SETVerifier = (*SETVerifier)(nil)

// NewSETVerifier prepares a SETVerifier, failing as New does (a jwks_file
// that cannot be read, an algorithm never accepted, an iss trusted twice),
// and when there is no replay cache.
func NewSETVerifier(ctx context.Context, o SETOptions) (*SETVerifier, error) {
	if o.Replay == nil {
		return nil, errors.New("attest: SET verification needs a replay cache")
	}
	opts := o.Options
	opts.MaxTokenBytes, opts.Replay, opts.CacheSize, opts.Issuers = o.MaxTokenBytes, o.Replay, 0, nil
	sv := &SETVerifier{transmitters: map[string]*transmitter{}}
	for _, tc := range o.Transmitters {
		opts.Issuers = append(opts.Issuers, tc.issuerConfig(o.PublicURL))
		sv.transmitters[setIssuerPrefix+tc.Name] = &transmitter{src: broker.TransmitterSource(tc.Name, tc.SignalPolicy), emailIssuer: tc.EmailIssuer}
	}
	v, err := New(ctx, opts)
	if err != nil {
		return nil, err
	}
	sv.v = v
	return sv, nil
}

// VerifySET implements broker.SETVerifier. Rules are checked in this
// order, and the first that fails is named: size; compact JWS shape;
// protected header (no crit, no b64:false; typ secevent+jwt); the
// transmitter chosen by iss; its algorithm allow-list; the key (by kid);
// the signature; iat (required, not in the future, at most max_age old),
// exp when present, aud; jti and events; and last the jti, consumed.
func (sv *SETVerifier) VerifySET(ctx context.Context, token string) (*broker.SecurityEvent, error) {
	tok, err := sv.v.parse(token)
	if err != nil {
		return nil, setError(broker.SETInvalidRequest, err)
	}
	if !strings.EqualFold(tok.typ, setType) && !strings.EqualFold(tok.typ, "application/"+setType) {
		return nil, broker.SETRefusal(broker.SETInvalidRequest, "the token's typ header is %s, not secevent+jwt: it is not a Security Event Token (RFC 8417 section 2.3)", clip(tok.typ))
	}
	ti, err := sv.v.selectIssuer(tok.claims)
	if err != nil {
		return nil, setError(broker.SETInvalidIssuer, err)
	}
	tr := sv.transmitters[ti.cfg.Name]
	jv, err := ti.algorithm(tok.alg)
	if err != nil {
		return nil, setError(broker.SETInvalidKey, err)
	}
	key, err := ti.key(ctx, tok.kid, tok.alg)
	if err != nil {
		if broker.ErrorCode(err) == broker.EUNAUTHORIZED {
			return nil, setError(broker.SETInvalidKey, err)
		}
		return nil, err
	}
	if err := jv.Verify(tok.signingInput, tok.signature, key.raw); err != nil {
		return nil, broker.SETRefusal(broker.SETInvalidKey, "the SET's signature does not verify with key %s of transmitter %s", key.name(), tr.src.Source.Name)
	}
	now := sv.v.clock.Now()
	ev, until, err := ti.checkSET(tok.claims, now)
	if err != nil {
		return nil, err
	}
	err = sv.v.replay.Consume(ctx, ti.cfg.Name+"/"+ev.JTI, until)
	switch {
	case errors.Is(err, ErrReplay):
		return nil, broker.SETRefusal(broker.SETInvalidRequest, "this SET was received already (its jti was seen); each SET is accepted once")
	case err != nil:
		sv.v.log.Error("attest: replay cache failed", "transmitter", tr.src.Source.Name, "err", err)
		return nil, broker.Wrap(broker.EUNAVAILABLE, err, "cannot record the SET's jti; send it again later")
	}
	ev.Source, ev.EmailIssuer = tr.src, tr.emailIssuer
	return ev, nil
}

// checkSET applies the claim rules of a SET at now and returns it with the
// time until which its jti must be remembered.
func (ti *trustedIssuer) checkSET(claims map[string]any, now time.Time) (*broker.SecurityEvent, time.Time, error) {
	iat, ok, err := numericDate(claims, "iat")
	switch {
	case err != nil:
		return nil, time.Time{}, setError(broker.SETInvalidRequest, err)
	case !ok:
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET has no iat claim (RFC 8417 section 2.2 requires one)")
	case iat.After(now.Add(ti.skew)):
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET was issued in the future, at %s (valet's time is %s; allowed clock skew %s)", rfc3339(iat), rfc3339(now), ti.skew)
	case now.Sub(iat) > ti.maxAge+ti.skew:
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET is too old: issued at %s, and transmitter %s's SETs are accepted for %s", rfc3339(iat), ti.transmitterName(), ti.maxAge)
	}
	until := iat.Add(ti.maxAge + ti.skew)
	if exp, ok, err := numericDate(claims, "exp"); err != nil {
		return nil, time.Time{}, setError(broker.SETInvalidRequest, err)
	} else if ok && !now.Before(exp.Add(ti.skew)) {
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET expired at %s", rfc3339(exp))
	}
	if err := ti.checkAudience(claims["aud"]); err != nil {
		return nil, time.Time{}, setError(broker.SETInvalidAudience, err)
	}
	jti, _ := claims["jti"].(string)
	if jti == "" {
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET has no jti (a non-empty string; RFC 8417 section 2.2)")
	}
	if err := checkIdentity("jti claim", jti); err != nil {
		return nil, time.Time{}, setError(broker.SETInvalidRequest, err)
	}
	raw, ok := claims["events"].(map[string]any)
	if !ok || len(raw) == 0 {
		return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET's events claim must be an object with at least one event (RFC 8417 section 2.2)")
	}
	ev := &broker.SecurityEvent{JTI: jti, IssuedAt: iat, Events: map[string]map[string]any{}}
	for typ, payload := range raw {
		p, ok := payload.(map[string]any)
		if !ok {
			return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the payload of event %s must be a JSON object", clip(typ))
		}
		ev.Events[typ] = p
	}
	if v, ok := claims["sub_id"]; ok {
		if ev.SubID, ok = v.(map[string]any); !ok {
			return nil, time.Time{}, broker.SETRefusal(broker.SETInvalidRequest, "the SET's sub_id must be a subject identifier object (RFC 9493)")
		}
	}
	if toe, ok, err := numericDate(claims, "toe"); err != nil {
		return nil, time.Time{}, setError(broker.SETInvalidRequest, err)
	} else if ok {
		ev.EventTime = toe
	}
	return ev, until, nil
}

func (ti *trustedIssuer) transmitterName() string {
	return strings.TrimPrefix(ti.cfg.Name, setIssuerPrefix)
}

// setError gives a verification error the RFC 8935 code of the rule it
// broke. The shared rules speak of attestations; a SET's refusal speaks
// of the SET.
func setError(code broker.SETErrorCode, err error) error {
	var be *broker.Error
	if !errors.As(err, &be) || (be.Code != broker.EUNAUTHORIZED && be.Code != broker.ETOOLARGE) {
		return err
	}
	msg := strings.ReplaceAll(be.Message, "attestation", "SET")
	msg = strings.ReplaceAll(msg, "issuer "+setIssuerPrefix, "transmitter ")
	if be.Code == broker.ETOOLARGE {
		return broker.Errorf(broker.ETOOLARGE, "%s", msg)
	}
	return broker.SETRefusal(code, "%s", msg)
}
