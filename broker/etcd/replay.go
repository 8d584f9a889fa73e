package etcd

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// ReplayCache is an attest.ReplayCache under the store's prefix, shared
// by every replica: a jti consumed on one replica is consumed for all.
// Consume is compare-and-swap on the key's revision. Expired entries stay
// until Purge removes them; they no longer count as consumed meanwhile.
// Entries expire by the values stored, never by etcd lease TTLs.
type ReplayCache struct {
	s     *Store
	clock clock.Clock
}

// ReplayCache returns the store's replay cache, reading the time from clk
// (nil: clock.Real{}).
func (s *Store) ReplayCache(clk clock.Clock) *ReplayCache {
	if clk == nil {
		clk = clock.Real{}
	}
	return &ReplayCache{s: s, clock: clk}
}

func (c *ReplayCache) keyOf(key string) string { return c.s.p + "r/k/" + key }

func (c *ReplayCache) expiryKey(exp int64, key string) string {
	return c.s.p + "r/e/" + tkey(time.Unix(0, exp)) + "/" + key
}

// Consume implements attest.ReplayCache: it records key until exp, or
// returns attest.ErrReplay if key is recorded with an expiry after now.
func (c *ReplayCache) Consume(ctx context.Context, key string, exp time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" {
		return errors.New("attest: empty replay key")
	}
	expSec := ceilUnix(exp)
	return c.s.update(ctx, func(t *tx) error {
		now := c.clock.Now().Unix()
		old, err := t.get(c.keyOf(key))
		if err != nil {
			return err
		}
		if len(old) == 8 {
			oldExp := int64(binary.BigEndian.Uint64(old))
			if now < oldExp {
				return attest.ErrReplay
			}
			t.del(c.expiryKey(oldExp, key))
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(expSec))
		t.put(c.keyOf(key), v[:])
		t.put(c.expiryKey(expSec, key), nil)
		return nil
	})
}

// Purge implements broker.ReplayPurger: it deletes the entries whose
// expiry is at or before now, walking the expiry index from the oldest,
// in transactions fenced by the leadership.
func (c *ReplayCache) Purge(now time.Time) (int, error) {
	s := c.s
	total := 0
	ctx := context.Background()
	prefix := s.p + "r/e/"
	for {
		n := 0
		err := s.updateAlone(ctx, func(t *tx) error {
			n = 0
			t.fenced = s.fencing()
			due, _, err := s.dueKeys(ctx, prefix, time.Unix(0, now.Unix()), "", 50)
			if err != nil {
				return err
			}
			for _, d := range due {
				n++
				t.del(d.key)
				rest := d.key[len(prefix):]
				i := strings.IndexByte(rest, '/')
				if i < 0 {
					continue
				}
				exp, _ := parseTkey(rest[:i])
				key := rest[i+1:]
				v, err := t.get(c.keyOf(key))
				if err != nil {
					return err
				}
				if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) == exp.UnixNano() {
					t.del(c.keyOf(key))
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < 50 {
			return total, nil
		}
	}
}

// ceilUnix rounds t up to whole seconds, so an entry never expires before
// the token does.
func ceilUnix(t time.Time) int64 {
	s := t.Unix()
	if t.Nanosecond() > 0 {
		s++
	}
	return max(s, 0)
}
