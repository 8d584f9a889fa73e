package vault

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends"
)

// accessorScan maps lease ids to the accessors of the tokens valet created
// for them, read from token metadata. One scan serves every recovery of a
// pass (a restart recovers its pending leases together): see scanFor.
type accessorScan struct {
	started time.Time
	done    chan struct{} // closed when the scan has finished

	// Set before done is closed.
	byNote map[string][]string // valet_lease_id -> accessors
	err    error               // the list itself failed: nothing is known
	// unreadable counts accessors that Vault refuses to look up even though
	// valet may look up accessors: tokens Vault no longer accepts (a token
	// creation cut off half-way leaves one). They cannot hide a live token.
	unreadable int
	// failed counts accessors whose lookup failed for another reason (Vault
	// overloaded, a timeout): any of them may be a live token of a lease,
	// so a lease not found in this scan is not known to have no token.
	failed     int
	failedErr  error  // the first such failure
	sampleAcc  string // one accessor that could not be read, for the log
	lookupsRun int    // accessors listed
}

// scanWindow is how long a finished scan keeps serving recoveries of
// leases that ended before it started (one pass of retries).
const scanWindow = 30 * time.Second

// recover revokes whatever an interrupted mint created for ref's lease: the
// token (and, for a dynamic secret, everything read with it, which Vault
// revokes with the token) whose metadata carries the lease id. It returns
// nil when a scan that read every token it could finds no token of the
// lease; an error when the scan is not possible or some token of the lease
// may have been among the accessors it could not read, so the lease stays
// in the revocation queue (and the next pass scans again) until its
// credential has expired on its own.
func (b *Backend) recover(ctx context.Context, ref backends.Ref) error {
	if !*b.opts.RecoveryScan {
		return errors.New("recovery_scan is off: a token of an interrupted mint cannot be found; it expires on its own by the lease's expiry")
	}
	scan, err := b.scanFor(ctx, ref.EndedAt)
	if err != nil {
		return err
	}
	found := scan.byNote[ref.CorrelationID]
	for _, acc := range found {
		if err := b.revokeAccessor(ctx, acc); err != nil {
			return err
		}
		b.log.Warn("revoked the Vault token of an interrupted mint", "lease", ref.CorrelationID, "accessor", acc)
	}
	if len(found) == 0 && scan.failed > 0 {
		return fmt.Errorf("no token of this lease among the Vault token accessors read, but %d of %d could not be read (%v); a token of this lease may be among them, so the search is repeated",
			scan.failed, scan.lookupsRun, scan.failedErr)
	}
	return nil
}

// scanFor returns a finished scan that started after endedAt, so it saw
// every token an interrupted mint of a lease that ended then can have
// created. Concurrent recoveries share one scan (single flight): a scan in
// progress that started late enough is awaited, not repeated; one that
// started too early is awaited and followed by one new scan for everyone
// who waited. A finished scan serves for scanWindow. A scan whose list
// failed serves only those who awaited it.
func (b *Backend) scanFor(ctx context.Context, endedAt time.Time) (*accessorScan, error) {
	for {
		b.scanMu.Lock()
		now := b.clock.Now()
		if s := b.scan; s != nil && !s.started.Before(endedAt) && now.Sub(s.started) < scanWindow {
			b.scanMu.Unlock()
			return s, nil
		}
		s := b.scanning
		fresh := s == nil
		if fresh {
			s = &accessorScan{started: now, done: make(chan struct{})}
			b.scanning = s
			go b.runScan(s)
		}
		b.scanMu.Unlock()
		select {
		case <-s.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("vault recovery scan: %w: %w", backends.ErrUnavailable, ctx.Err())
		}
		if s.started.Before(endedAt) {
			continue // it began before this lease ended: scan again
		}
		if s.err != nil {
			return nil, s.err
		}
		return s, nil
	}
}

// runScan runs s on a context of its own, so a recovery that gives up
// waiting does not cut the scan short for the others, and publishes it.
func (b *Backend) runScan(s *accessorScan) {
	ctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(b.life, cancel)
	s.byNote = map[string][]string{}
	s.err = b.scanAccessors(ctx, s)
	stop()
	cancel()
	if s.unreadable+s.failed > 0 {
		b.log.Warn("the recovery scan skipped Vault token accessors it could not read; every other token was searched",
			"accessors", s.lookupsRun, "unreadable", s.unreadable, "failed", s.failed, "sample_accessor", s.sampleAcc, "first_error", s.failedErr)
	}
	b.scanMu.Lock()
	b.scanning = nil
	if s.err == nil {
		b.scan = s
	}
	b.scanMu.Unlock()
	close(s.done)
}

// scanAccessors lists every token accessor and looks up each one's
// metadata, 16 at a time. Only a failure of the list fails the scan: an
// accessor that cannot be looked up is skipped and counted (see
// accessorScan), and the search goes on.
func (b *Backend) scanAccessors(ctx context.Context, s *accessorScan) error {
	if err := b.auth.ready(ctx); err != nil {
		return err
	}
	list, err := b.client.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil {
		return fmt.Errorf("list token accessors to find tokens of interrupted mints (needs list and sudo on auth/token/accessors): %w", b.vaultError(err, "list accessors"))
	}
	if list == nil {
		return nil
	}
	keys, _ := list.Data["keys"].([]any)
	var mu sync.Mutex
	denied := 0
	var deniedAcc string
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, k := range keys {
		acc, ok := k.(string)
		if !ok {
			continue
		}
		s.lookupsRun++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sec, err := b.client.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": acc})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil && notFound(err):
				// Revoked or expired since the list.
			case err != nil && isPermissionDenied(err):
				denied++
				deniedAcc = acc
			case err != nil:
				s.failed++
				if s.failedErr == nil {
					s.failedErr = b.vaultError(err, "look up an accessor")
					s.sampleAcc = acc
				}
			case sec != nil:
				meta, _ := sec.Data["meta"].(map[string]any)
				if id, ok := meta["valet_lease_id"].(string); ok && id != "" {
					s.byNote[id] = append(s.byNote[id], acc)
				}
			}
		}()
	}
	wg.Wait()
	if denied == 0 {
		return nil
	}
	// Vault answers 403 both when valet's policy does not allow the lookup
	// and for an accessor whose token it no longer accepts (nothing tells
	// them apart). valet looking up its own token's accessor tells which.
	if err := b.canLookUpAccessors(ctx); err != nil {
		return err
	}
	s.unreadable = denied
	if s.sampleAcc == "" {
		s.sampleAcc = deniedAcc
	}
	return nil
}

// canLookUpAccessors checks that valet's policy allows
// auth/token/lookup-accessor, by looking up its own token's accessor.
func (b *Backend) canLookUpAccessors(ctx context.Context) error {
	self, err := b.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return fmt.Errorf("look up valet's own Vault token: %w", b.vaultError(err, "look up its own token"))
	}
	acc, _ := self.Data["accessor"].(string)
	if acc == "" {
		return errors.New("vault: valet's own token has no accessor (a root token?); cannot tell a denied accessor lookup from an unusable token")
	}
	if _, err := b.client.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": acc}); err != nil {
		return fmt.Errorf("look up token accessors to find tokens of interrupted mints (needs update on auth/token/lookup-accessor): %w", b.vaultError(err, "look up an accessor"))
	}
	return nil
}
