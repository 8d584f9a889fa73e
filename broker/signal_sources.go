package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/valet-broker/valet/broker/agents"
)

// SignalSource is an authenticated sender of signals with what its
// signals may make valet do: a REST source (signals.sources), an SSF
// transmitter, one of valet's detectors, or an operator.
type SignalSource struct {
	Source agents.Source
	Policy SignalPolicy
	// limiter bounds the source's signals (nil: no limit).
	limiter *rate.Limiter
	rate    float64

	mu        sync.Mutex
	refused   int       // rate-limited signals not yet in an audit record
	lastAudit time.Time // of the last rate-limit refusal recorded
}

// allow spends one signal of the source's rate at now.
func (s *SignalSource) allow(now time.Time) bool {
	return s.limiter == nil || s.limiter.AllowN(now, 1)
}

// mayAsk reports whether the source may ask for action a.
func (s *SignalSource) mayAsk(a agents.Action) bool {
	return slices.Contains(s.Policy.AllowedActions, a)
}

// OperatorSource is an operator sending a signal: every action allowed,
// and signals.actions by severity.
func OperatorSource(op *Operator) *SignalSource {
	return &SignalSource{Source: agents.Source{Kind: agents.SourceOperator, Name: op.Name},
		Policy: SignalPolicy{AllowedActions: slices.Clone(agents.Actions)}}
}

// DetectorSource is one of valet's own detectors, named name, whose
// signals act as policy says.
func DetectorSource(name string, policy SignalPolicy) *SignalSource {
	return &SignalSource{Source: agents.Source{Kind: agents.SourceDetector, Name: name}, Policy: policy}
}

// TransmitterSource is an SSF transmitter of signals.transmitters, named
// name, whose events act as policy says.
func TransmitterSource(name string, policy SignalPolicy) *SignalSource {
	return &SignalSource{Source: agents.Source{Kind: agents.SourceSET, Name: name}, Policy: policy}
}

// SignalSources authenticates the senders of POST /v1/signals: static
// tokens, compared as SHA-256 in constant time, and ID tokens of
// signals.issuers (verified by a Verifier built from them), matched to a
// source by issuer and subject.
type SignalSources struct {
	tokens   []sourceToken
	bySub    map[string]*SignalSource // issuer name + "\x00" + subject
	issuers  map[string]bool          // iss values of signals.issuers
	verifier Verifier
}

type sourceToken struct {
	sum [sha256.Size]byte
	src *SignalSource
}

// SignalIssuer is what SignalSources needs of one of signals.issuers: its
// name in the configuration and its iss.
type SignalIssuer struct {
	Name   string
	Issuer string
}

// NewSignalSources builds the authenticator from the validated sources,
// the signals issuers and a Verifier of their ID tokens (nil when there
// are none).
func NewSignalSources(cfg []SignalSourceConfig, issuers []SignalIssuer, verifier Verifier) *SignalSources {
	ss := &SignalSources{bySub: map[string]*SignalSource{}, issuers: map[string]bool{}, verifier: verifier}
	for _, ic := range issuers {
		ss.issuers[ic.Issuer] = true
	}
	for _, c := range cfg {
		src := &SignalSource{Source: agents.Source{Kind: agents.SourceREST, Name: c.Name}, Policy: c.SignalPolicy, rate: c.Rate}
		if finite(c.Rate) {
			src.limiter = rate.NewLimiter(rate.Limit(c.Rate), c.Burst)
		}
		if c.TokenSHA256 != "" {
			var t sourceToken
			b, _ := hex.DecodeString(c.TokenSHA256) // validated by SignalsConfig.Validate
			copy(t.sum[:], b)
			t.src = src
			ss.tokens = append(ss.tokens, t)
			continue
		}
		ss.bySub[c.Issuer+"\x00"+c.Subject] = src
	}
	return ss
}

// Authenticate returns the source a bearer token belongs to. ok is false
// when the token is no source credential at all (not a source's static
// token, not a JWT of a signals issuer), so the caller may try it as an
// operator's; err is set when it is one but does not verify (the
// verifier's errors) or names no source (EUNAUTHORIZED).
func (ss *SignalSources) Authenticate(ctx context.Context, token string) (src *SignalSource, ok bool, err error) {
	if ss == nil {
		return nil, false, nil
	}
	sum := sha256.Sum256([]byte(token))
	for i := range ss.tokens {
		// Every token is compared, so the time taken does not say which
		// one matched.
		if subtle.ConstantTimeCompare(sum[:], ss.tokens[i].sum[:]) == 1 {
			src = ss.tokens[i].src
		}
	}
	if src != nil {
		return src, true, nil
	}
	if ss.verifier == nil || !ss.issuers[peekIssuer(token)] {
		return nil, false, nil
	}
	p, err := ss.verifier.Verify(ctx, token)
	if err != nil {
		return nil, true, err
	}
	src = ss.bySub[p.Issuer+"\x00"+p.Subject]
	if src == nil {
		return nil, true, Errorf(EUNAUTHORIZED, "the ID token's subject is not a configured signal source of issuer %s", p.Issuer)
	}
	return src, true, nil
}
