package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the Shared Signals side of the signal flow: Security
// Event Tokens (RFC 8417) that SSF transmitters push to valet (RFC 8935)
// become signals. A SETVerifier (broker/attest) checks each token;
// ReceiveSET maps each event it carries (CAEP and RISC event types, RFC
// 9493 subject identifiers) to a signal and raises it.

// Event types valet acts on (OpenID CAEP 1.0 and RISC 1.0), and what each
// means here: its severity, and the action asked for, which the
// transmitter's allowed actions cap.
const (
	EventTypeSessionRevoked       = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	EventTypeCredentialChange     = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	EventTypeTokenClaimsChange    = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change"
	EventTypeAccountDisabled      = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	EventTypeAccountPurged        = "https://schemas.openid.net/secevent/risc/event-type/account-purged"
	EventTypeCredentialCompromise = "https://schemas.openid.net/secevent/risc/event-type/credential-compromise"
)

// setEventMapping is what an event type becomes.
type setEventMapping struct {
	name     string // for reasons: "CAEP session-revoked"
	severity agents.Severity
	action   agents.Action
}

// setEvents maps the event types valet acts on. A session revoked or a
// credential or its claims changed at the identity provider ends what
// valet derived from it; an account disabled, purged or whose credential
// was compromised also quarantines the agent.
var setEvents = map[string]setEventMapping{
	EventTypeSessionRevoked:       {"CAEP session-revoked", agents.SeverityMedium, agents.ActionRevoke},
	EventTypeCredentialChange:     {"CAEP credential-change", agents.SeverityMedium, agents.ActionRevoke},
	EventTypeTokenClaimsChange:    {"CAEP token-claims-change", agents.SeverityLow, agents.ActionRevoke},
	EventTypeAccountDisabled:      {"RISC account-disabled", agents.SeverityHigh, agents.ActionQuarantine},
	EventTypeAccountPurged:        {"RISC account-purged", agents.SeverityCritical, agents.ActionQuarantine},
	EventTypeCredentialCompromise: {"RISC credential-compromise", agents.SeverityCritical, agents.ActionQuarantine},
}

// SETErrorCode is an error code of RFC 8935 section 2.4, which the push
// endpoint answers with (the "err" member).
type SETErrorCode string

// RFC 8935 error codes.
const (
	SETInvalidRequest  SETErrorCode = "invalid_request"  // the SET or the request is malformed, or was received already
	SETInvalidKey      SETErrorCode = "invalid_key"      // a key, algorithm or signature is unacceptable
	SETInvalidIssuer   SETErrorCode = "invalid_issuer"   // the SET's issuer is no configured transmitter
	SETInvalidAudience SETErrorCode = "invalid_audience" // the SET is not addressed to valet
)

// SETError carries the RFC 8935 code of a refused SET in an error's cause
// chain; find it with errors.As.
type SETError struct{ Code SETErrorCode }

func (e *SETError) Error() string { return "set: " + string(e.Code) }

// SETRefusal returns the error for a SET refused by rule code, with a
// message for the transmitter: EUNAUTHORIZED with a *SETError cause.
func SETRefusal(code SETErrorCode, format string, args ...any) error {
	return Wrap(EUNAUTHORIZED, &SETError{Code: code}, format, args...)
}

// SecurityEvent is a verified Security Event Token.
type SecurityEvent struct {
	// Source is the transmitter that signed it, with its policy.
	Source *SignalSource
	JTI    string
	// IssuedAt is its iat; EventTime its toe (RFC 8417), when given.
	IssuedAt  time.Time
	EventTime time.Time
	// Events maps each event type URI to its payload (a JSON object,
	// numbers as json.Number).
	Events map[string]map[string]any
	// SubID is the top-level sub_id (RFC 9493, as SSF 1.0 places it), nil
	// when absent.
	SubID map[string]any
	// EmailIssuer is the attestation issuer whose agents' subjects are the
	// email addresses of email subject identifiers ("" when the
	// transmitter's email subjects name no agent).
	EmailIssuer string
}

// SETVerifier verifies Security Event Tokens pushed by SSF transmitters.
type SETVerifier interface {
	// VerifySET checks a SET by the rules of attestations (RFC 8725) and
	// of RFC 8417, and consumes its jti. Errors: EUNAUTHORIZED with a
	// *SETError cause (the message says which rule failed), ETOOLARGE,
	// EUNAVAILABLE when a key or the replay cache cannot be read.
	VerifySET(ctx context.Context, token string) (*SecurityEvent, error)
}

// SETOutcome is what became of one event of a SET.
type SETOutcome struct {
	EventType string `json:"event_type"`
	// Outcome is "accepted" (a signal was raised), "ignored" (an event
	// type or subject valet does not act on) or "refused" (its subject is
	// unknown, or its signal did not pass).
	Outcome  string `json:"outcome"`
	SignalID string `json:"signal_id,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// ReceiveSET accepts a SET pushed by a transmitter (RFC 8935): each event
// it carries that valet acts on (setEvents), about a subject it can map
// to one of its own (an agent, a lease or a lineage), becomes a signal of
// the transmitter. Events of other types, and subjects of other formats,
// are recorded and ignored; a subject valet does not know is refused
// (audited) without failing the SET, since a transmitter broadcasts
// events about subjects of many receivers. Errors: those of
// SETVerifier.VerifySET (a SET that does not verify is refused through
// RefuseCredential, so the address's failures are throttled:
// ERATELIMIT), EUNAVAILABLE when a signal could not be recorded.
func (b *Broker) ReceiveSET(ctx context.Context, token, sourceIP, requestID string) ([]SETOutcome, error) {
	if b.sets == nil {
		err := SETRefusal(SETInvalidIssuer, "this server trusts no SSF transmitter (signals.transmitters is empty)")
		return nil, b.refuseSET(ctx, err, sourceIP, requestID)
	}
	ev, err := b.sets.VerifySET(ctx, token)
	if err != nil {
		if code := ErrorCode(err); code == EUNAUTHORIZED || code == ETOOLARGE {
			return nil, b.refuseSET(ctx, err, sourceIP, requestID)
		}
		return nil, err
	}
	var out []SETOutcome
	for _, typ := range slices.Sorted(maps.Keys(ev.Events)) {
		o, err := b.setEvent(ctx, ev, typ, ev.Events[typ], requestID)
		if err != nil {
			return out, err
		}
		out = append(out, o)
	}
	return out, nil
}

// refuseSET accounts for a SET that did not verify and returns the error
// to answer with: err, or ERATELIMIT once the address is over its budget.
func (b *Broker) refuseSET(ctx context.Context, err error, sourceIP, requestID string) error {
	if rerr := b.RefuseCredential(ctx, Refusal{Credential: CredentialSET, SourceIP: sourceIP, Kind: audit.KindSignal,
		RequestID: requestID, Reason: "SET refused: " + ErrorMessage(err)}); rerr != nil {
		return rerr
	}
	return err
}

// setEvent raises the signal of one event of ev.
func (b *Broker) setEvent(ctx context.Context, ev *SecurityEvent, typ string, payload map[string]any, requestID string) (SETOutcome, error) {
	o := SETOutcome{EventType: typ}
	src := ev.Source
	ignore := func(why string) (SETOutcome, error) {
		o.Outcome, o.Reason = "ignored", why
		b.audit(ctx, audit.Entry{Kind: audit.KindSignal, Actor: actorOf(src.Source), RequestID: requestID,
			Reason:  fmt.Sprintf("SET event ignored: %s", why),
			Details: map[string]string{"source": src.Source.String(), "set_jti": ev.JTI, "set_event": clipText(typ, 200)}})
		return o, nil
	}
	m, ok := setEvents[typ]
	if !ok {
		return ignore("valet does not act on event type " + clipText(typ, 200))
	}
	subID := ev.SubID
	if subID == nil {
		// Drafts before SSF 1.0 put the subject in the event.
		subID, _ = payload["subject"].(map[string]any)
	}
	if subID == nil {
		return ignore(m.name + " event names no subject (sub_id)")
	}
	subject, ok := b.mapSubject(subID, ev.EmailIssuer, 0)
	if !ok {
		return ignore(m.name + " event's subject is not in a format valet maps to its agents, leases or lineages")
	}
	when := ev.EventTime
	if t, ok := numericDateOf(payload["event_timestamp"]); ok {
		when = t
	}
	reason := fmt.Sprintf("%s from transmitter %s", m.name, src.Source.Name)
	if r := adminReason(payload["reason_admin"]); r != "" {
		reason += ": " + r
	}
	res, err := b.RaiseSignal(ctx, src, SignalRequest{Subject: subject, Severity: m.severity, Reason: clipText(reason, MaxSignalReason),
		Action: m.action, capAction: true, EventTime: when, RequestID: requestID,
		Event: &agents.SET{Transmitter: src.Source.Name, JTI: ev.JTI, EventType: typ}})
	switch code := ErrorCode(err); code {
	case "":
		o.Outcome, o.SignalID = "accepted", res.Signal.ID
		return o, nil
	case ENOTFOUND, EINVALID, EFORBIDDEN, ERATELIMIT:
		o.Outcome, o.Reason = "refused", ErrorMessage(err)
		return o, nil
	default:
		return o, err
	}
}

// maxAliases bounds the nesting of aliases subject identifiers.
const maxAliases = 2

// mapSubject maps an RFC 9493 subject identifier to a signal subject:
//
//   - iss_sub: the agent "<issuer-name>/<sub>" of the attestation issuer
//     whose iss it is, or, with valet's own public URL as iss, the agent
//     whose id is sub (valet's tokens carry the agent id as sub);
//   - email: the agent "<email_issuer>/<email>" when the transmitter names
//     an email_issuer;
//   - opaque: a lineage id (jti:..., pod:..., run:..., spiffe:...), a
//     lease id or an agent id, by its shape;
//   - jwt_id (SSF): the lineage of that token, "jti:<iss>#<jti>";
//   - aliases: the first of its identifiers that maps.
func (b *Broker) mapSubject(id map[string]any, emailIssuer string, depth int) (agents.Subject, bool) {
	str := func(k string) string { s, _ := id[k].(string); return s }
	agent := func(a string) (agents.Subject, bool) {
		if !ValidAgentID(a) {
			return agents.Subject{}, false
		}
		return agents.Subject{Kind: agents.SubjectAgent, ID: a}, true
	}
	switch str("format") {
	case "iss_sub":
		iss, sub := str("iss"), str("sub")
		if iss == b.cfg.PublicURL {
			return agent(sub)
		}
		if name, ok := b.issuerNames[iss]; ok && sub != "" {
			return agent(name + "/" + sub)
		}
	case "email":
		if email := str("email"); emailIssuer != "" && email != "" {
			return agent(emailIssuer + "/" + email)
		}
	case "opaque":
		v := str("id")
		switch {
		case ValidLineage(v):
			return agents.Subject{Kind: agents.SubjectLineage, ID: v}, true
		case leases.ValidID(v):
			return agents.Subject{Kind: agents.SubjectLease, ID: v}, true
		default:
			return agent(v)
		}
	case "jwt_id":
		if l := "jti:" + str("iss") + "#" + str("jti"); str("iss") != "" && str("jti") != "" && ValidLineage(l) {
			return agents.Subject{Kind: agents.SubjectLineage, ID: l}, true
		}
	case "aliases":
		if depth >= maxAliases {
			return agents.Subject{}, false
		}
		list, _ := id["identifiers"].([]any)
		for _, e := range list {
			if m, ok := e.(map[string]any); ok {
				if s, ok := b.mapSubject(m, emailIssuer, depth+1); ok {
					return s, true
				}
			}
		}
	}
	return agents.Subject{}, false
}

// adminReason reads a CAEP reason_admin: a map of language tags to text;
// English first, else any, cleaned to one line.
func adminReason(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return ""
	}
	pick := func(k string) string { s, _ := m[k].(string); return s }
	s := pick("en")
	if s == "" {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if s = pick(k); s != "" {
				break
			}
		}
	}
	return clipText(s, 300)
}

// clipText makes untrusted text fit a reason: control characters become
// spaces, invalid UTF-8 is dropped, and it is cut to at most n bytes on a
// character boundary.
func clipText(s string, n int) string {
	s = strings.ToValidUTF8(s, "")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut]
}

// numericDateOf reads a JWT NumericDate decoded with UseNumber (or as a
// float64).
func numericDateOf(v any) (time.Time, bool) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		var err error
		if f, err = n.Float64(); err != nil {
			return time.Time{}, false
		}
	case float64:
		f = n
	default:
		return time.Time{}, false
	}
	if f <= 0 || f >= 1<<40 || math.IsNaN(f) {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
}
