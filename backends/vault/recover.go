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
// for them, read from token metadata. One scan serves every recovery in a
// short window (a restart recovers its pending leases together).
type accessorScan struct {
	at     time.Time
	byNote map[string][]string // valet_lease_id -> accessors
	err    error
}

// scanWindow is how long one scan is reused.
const scanWindow = 30 * time.Second

// recover revokes whatever an interrupted mint created for ref's lease: the
// token (and, for a dynamic secret, everything read with it, which Vault
// revokes with the token) whose metadata carries the lease id. It returns
// nil when a complete scan finds nothing (no token was created); an error
// when the scan is not possible, so the lease stays in the revocation queue
// until its expiry, when the token has expired on its own.
func (b *Backend) recover(ctx context.Context, ref backends.Ref) error {
	if !*b.opts.RecoveryScan {
		return errors.New("recovery_scan is off: a token of an interrupted mint cannot be found; it expires on its own by the lease's expiry")
	}
	scan := b.accessorScan(ctx)
	if scan.err != nil {
		return scan.err
	}
	for _, acc := range scan.byNote[ref.CorrelationID] {
		if err := b.revokeAccessor(ctx, acc); err != nil {
			return err
		}
		b.log.Warn("revoked the Vault token of an interrupted mint", "lease", ref.CorrelationID, "accessor", acc)
	}
	return nil
}

func (b *Backend) accessorScan(ctx context.Context) *accessorScan {
	b.scanMu.Lock()
	defer b.scanMu.Unlock()
	if b.scan != nil && b.clock.Now().Sub(b.scan.at) < scanWindow {
		return b.scan
	}
	s := &accessorScan{at: b.clock.Now(), byNote: map[string][]string{}}
	s.err = b.scanAccessors(ctx, s.byNote)
	if s.err == nil {
		b.scan = s
	}
	return s
}

// scanAccessors lists every token accessor and looks up each one's
// metadata, 16 at a time.
func (b *Backend) scanAccessors(ctx context.Context, out map[string][]string) error {
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
	var firstErr error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, k := range keys {
		acc, ok := k.(string)
		if !ok {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sec, err := b.client.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": acc})
			if err != nil {
				if !notFound(err) {
					mu.Lock()
					if firstErr == nil {
						firstErr = b.vaultError(err, "look up an accessor")
					}
					mu.Unlock()
				}
				return
			}
			if sec == nil {
				return
			}
			meta, _ := sec.Data["meta"].(map[string]any)
			if id, ok := meta["valet_lease_id"].(string); ok && id != "" {
				mu.Lock()
				out[id] = append(out[id], acc)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}
