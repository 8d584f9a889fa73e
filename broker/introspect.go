package broker

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases"
)

// This file holds what resource servers ask: whether a valet-issued token
// is active (RFC 7662 introspection) and the public keys that verify it.

// Introspection is an RFC 7662 answer.
type Introspection struct {
	Active bool
	Claims map[string]any
	Lease  *leases.Lease
}

// Introspect reports whether a valet-issued token is active: its signature
// and issuer verify and its lease is active and unexpired. Anything else,
// including malformed input, is simply inactive.
func (b *Broker) Introspect(ctx context.Context, token string) (*Introspection, error) {
	if token == "" || len(token) > b.cfg.Limits.MaxAttestationBytes {
		return &Introspection{}, nil
	}
	for _, be := range b.backends {
		in, ok := be.(backends.Introspector)
		if !ok {
			continue
		}
		info, err := in.Introspect(token)
		if err != nil {
			continue
		}
		if !leases.ValidID(info.LeaseID) {
			return &Introspection{}, nil
		}
		l, err := b.store.Get(ctx, info.LeaseID)
		if errors.Is(err, leases.ErrNotFound) {
			return &Introspection{}, nil
		}
		if err != nil {
			return nil, storeError(err)
		}
		now := b.clock.Now()
		exp, _ := info.Claims["exp"].(float64)
		if !l.ActiveAt(now) || float64(now.Unix()) >= exp {
			if ended := endedOnPurpose(l); ended != "" && len(b.detectors) > 0 {
				b.observe(Observation{Kind: ObserveEndedUse, Time: now, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID,
					Lineage: l.Lineage, LeaseState: ended, EndedAt: l.EndedAt})
			}
			return &Introspection{Lease: l}, nil
		}
		return &Introspection{Active: true, Claims: info.Claims, Lease: l}, nil
	}
	return &Introspection{}, nil
}

// JWKSMaxAge is how long resource servers may cache the JWKS
// (Cache-Control max-age of /.well-known/jwks.json). A new signing key is
// published at least this long before it signs (the signing-key-rotation
// job's prepublish).
const JWKSMaxAge = 5 * time.Minute

// PublicJWKs returns the public keys of every signing backend, then those
// of Options.KeyPublishers (the SSF transmitter's).
func (b *Broker) PublicJWKs() []map[string]any {
	names := make([]string, 0, len(b.backends))
	for n := range b.backends {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []map[string]any{}
	for _, n := range names {
		if kp, ok := b.backends[n].(backends.KeyPublisher); ok {
			out = append(out, kp.PublicJWKs()...)
		}
	}
	for _, kp := range b.publishers {
		out = append(out, kp.PublicJWKs()...)
	}
	return out
}

// endedOnPurpose is how lease l was ended before its time, StateRevoked
// or StateReleased (also while its revocation is under way), or "" when
// it was not (it is live, or it expired).
func endedOnPurpose(l *leases.Lease) leases.State {
	reason := l.State
	if l.State == leases.StateRevoking || l.State == leases.StateIrrevocable {
		reason = l.EndReason
	}
	if reason == leases.StateRevoked || reason == leases.StateReleased {
		return reason
	}
	return ""
}
