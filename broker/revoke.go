package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the end of a lease: released by its agent, revoked by an
// operator (one lease or every lease of an agent or lineage), and the
// revocation at the backend that the durable queue (leases.RevocationQueue)
// retries until it is confirmed (invariant 5).

// EndLease ends a lease: released when its agent gives it back, revoked
// when an operator takes it. The first revocation attempt runs at once;
// the returned lease is released/revoked, revoking if the backend did
// not confirm yet (it stays queued), or revoking and Unrevocable, to end
// expired, when the backend cannot revoke the credential at all (it stays
// valid until its own expiry, and the lease says so until then). Ending
// an ended lease changes nothing and returns it as it is; so does ending a
// lease past its expiry, which ended on its own (it is returned expired,
// and the expirer records it).
func (b *Broker) EndLease(ctx context.Context, c Caller, id, reason, requestID string) (*leases.Lease, error) {
	l, err := b.GetLease(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if l.State.Terminal() {
		return l, nil
	}
	to, kind := leases.StateReleased, audit.KindRelease
	if c.Operator != nil {
		to, kind = leases.StateRevoked, audit.KindRevoke
	}
	if reason == "" {
		reason = string(to) + " by " + c.actor().Type
	}
	ended, err := b.store.End(ctx, l.ID, to, b.clock.Now(), audit.Entry{
		Kind: kind, Actor: c.actor(), Reason: reason, RequestID: requestID,
	})
	if err != nil {
		return nil, storeError(err)
	}
	out, err := b.revoker.RevokeNow(ctx, ended)
	if err != nil {
		b.log.Error("revocation attempt failed to record", "lease", id, "err", err)
		return ended, nil
	}
	return out, nil
}

// RevokeMatching revokes every live lease matching f (by agent or
// lineage) for an operator, and returns how many it ended: those active or
// pending as of now (a lease past its expiry has ended on its own; the
// expirer records it). Leases are
// ended and revoked at their backends in parallel, at most
// leases.revoke_concurrency at a time; leases whose backend does not
// confirm stay queued for retries like any other. One lease that cannot be
// ended does not stop the others: a lease gone meanwhile is skipped, and
// any other failure is logged with the lease id and, once every other
// lease was ended, returned as EINTERNAL whose cause (logged) says how many
// were ended and how many were not (revoking again is harmless).
func (b *Broker) RevokeMatching(ctx context.Context, op *Operator, f leases.Filter, reason, requestID string) (int, error) {
	if f.AgentID == "" && f.Lineage == "" {
		return 0, Errorf(EINVALID, "give agent_id or lineage; revoking everything at once is not offered")
	}
	var ids []string
	now := b.clock.Now()
	if f.Lineage != "" && len(b.detectors) > 0 {
		b.observe(Observation{Kind: ObserveLineageRevoked, Time: now, LineageID: f.Lineage, Reason: "operator " + op.Name})
	}
	for {
		f.Limit = 1000
		ls, err := b.store.List(ctx, f)
		if err != nil {
			return 0, storeError(err)
		}
		for _, l := range ls {
			if st := l.StateAt(now); st == leases.StateActive || st == leases.StatePending {
				ids = append(ids, l.ID)
			}
		}
		if len(ls) < f.Limit {
			break
		}
		f.Before = ls[len(ls)-1].ID
	}
	var (
		mu       sync.Mutex
		n        int
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, max(1, b.cfg.Leases.RevokeConcurrency))
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := b.EndLease(ctx, Caller{Operator: op}, id, reason, requestID)
			if err != nil && ErrorCode(err) != ENOTFOUND {
				b.log.Error("bulk revocation: a lease could not be ended; the others are", "lease", id, "request_id", requestID, "err", err)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				n++
			case ErrorCode(err) == ENOTFOUND:
				// Pruned since it was listed: nothing left to revoke.
			default:
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	if failed > 0 {
		return n, Wrap(EINTERNAL, firstErr, "ended %d of %d live leases; %d could not be ended (see the server log); revoking again is harmless", n, n+failed, failed)
	}
	return n, nil
}

// leaseRef is what a backend is told about the credential of lease l.
func leaseRef(l *leases.Lease) backends.Ref {
	return backends.Ref{Handle: l.Handle, CorrelationID: l.ID, AgentID: l.AgentID, Role: l.Role,
		ExpiresAt: l.ExpiresAt, EndedAt: l.EndedAt, Details: l.Details}
}

// RevokeAtBackend returns the revocation that the queue
// (leases.RevocationQueue) makes and retries for each ended lease: it
// revokes the lease's credential at its backend among bes, by handle, or
// by correlation id (the lease id) for a lease an interrupted mint left
// without one. validUntil tells the backend how long the credential can
// live at most (leases.BoltStore.ValidUntil). A backend that is a
// backends.RevokeNoter returns a note for the audit record of the
// revocation. A backend's answer that it cannot revoke the credential at
// all (backends.ErrUnrevocable) reaches the queue as leases.ErrUnrevocable:
// the lease then reads revoking until the credential has expired, never
// released or revoked. A lease whose backend is no longer configured
// fails, and stays queued until it is irrevocable (invariant 5).
func RevokeAtBackend(bes map[string]backends.Backend, validUntil func(*leases.Lease) time.Time) leases.RevokeFunc {
	return func(ctx context.Context, l *leases.Lease) (string, error) {
		be, ok := bes[l.Backend]
		if !ok {
			return "", fmt.Errorf("backend %q is no longer configured", l.Backend)
		}
		ref := leaseRef(l)
		if validUntil != nil {
			ref.ValidUntil = validUntil(l)
		}
		var note string
		var err error
		if rn, ok := be.(backends.RevokeNoter); ok {
			note, err = rn.RevokeNoted(ctx, ref)
		} else {
			err = be.Revoke(ctx, ref)
		}
		if errors.Is(err, backends.ErrUnrevocable) {
			return "", leases.Unrevocable(err)
		}
		return note, err
	}
}

// RevokesAtExpiry returns what the lease store asks of a lease
// (broker/bolt's Store.SetRevokeAtExpiry): whether its credential's holder
// can extend it without valet, so that it must be revoked when the lease
// expires rather than assumed dead. That is so when the lease's backend
// among bes is a backends.ExpiryRevoker.
func RevokesAtExpiry(bes map[string]backends.Backend) func(l *leases.Lease) bool {
	return func(l *leases.Lease) bool {
		_, ok := bes[l.Backend].(backends.ExpiryRevoker)
		return ok
	}
}

// LeasesExpired is told about the leases the expirer (leases.Expirer) just
// ended. Those whose credentials had to be revoked at expiry (see
// RevokesAtExpiry) are revoking: the revocation queue is woken so that
// their revocation starts now rather than at its next scheduled attempt.
func (b *Broker) LeasesExpired(expired []*leases.Lease) {
	for _, l := range expired {
		if l.State == leases.StateRevoking {
			b.revoker.Kick()
			return
		}
	}
}
