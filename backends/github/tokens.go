package github

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/valet-broker/valet/backends/kek"
)

// tokenStore keeps, for each lease, a copy of its installation token
// sealed under the KEK, solely so that valet can revoke the token (GitHub's
// DELETE /installation/token authenticates with the token itself). It is a
// bbolt file of its own; every write is fsynced (concurrent writes share a
// commit) before it returns, so a token whose copy was written can be
// revoked after a crash.
//
// A record is erased (replaced by a tombstone without the secret) once
// GitHub has confirmed the token's revocation, and deleted with its
// tombstone once the token has expired. Nothing else reads it: the copy
// never reaches an API answer, a log line or an audit record.
type tokenStore struct {
	db      *bbolt.DB
	kek     kek.Ring
	backend string
}

var bucketTokens = []byte("tokens") // lease id -> JSON tokenRecord

// tokenRecord is a stored token, or the tombstone of a revoked one.
type tokenRecord struct {
	App          string `json:"app"`
	Installation int64  `json:"installation"`
	// ExpiresAt is when the token is dead at GitHub at the latest, by
	// valet's clock.
	ExpiresAt time.Time `json:"expires_at"`
	// RevokedAt is set, and Sealed cleared, once GitHub confirmed the
	// revocation.
	RevokedAt time.Time   `json:"revoked_at,omitzero"`
	Sealed    *kek.Sealed `json:"sealed,omitempty"`
}

func openTokenStore(path string, key kek.Ring, backend string) (*tokenStore, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second, FreelistType: bbolt.FreelistMapType})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: the token store is in use by another valet process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketTokens)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	// Mints wait for their copy to be on disk: a short window lets
	// concurrent mints share one fsync without delaying a lone one much.
	db.MaxBatchDelay = time.Millisecond
	return &tokenStore{db: db, kek: key, backend: backend}, nil
}

func (s *tokenStore) close() error { return s.db.Close() }

// aad binds a sealed token to its lease and backend.
func (s *tokenStore) aad(leaseID string) []byte {
	return []byte("valet/github-token/" + s.backend + "/" + leaseID)
}

// put seals token and stores it under leaseID, durably.
func (s *tokenStore) put(leaseID, app string, installation int64, token string, expires time.Time) error {
	sealed, err := s.kek.Seal(s.aad(leaseID), []byte(token))
	if err != nil {
		return err
	}
	v, err := json.Marshal(tokenRecord{App: app, Installation: installation, ExpiresAt: expires, Sealed: &sealed})
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketTokens).Put([]byte(leaseID), v)
	})
}

// errNoToken: the store has no record of the lease.
var errNoToken = errors.New("no sealed token for this lease")

// get returns the record of leaseID and, unless it is a tombstone, the
// unsealed token. It returns errNoToken when there is no record.
func (s *tokenStore) get(leaseID string) (*tokenRecord, string, error) {
	var rec tokenRecord
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketTokens).Get([]byte(leaseID))
		if v == nil {
			return errNoToken
		}
		return json.Unmarshal(v, &rec)
	})
	if err != nil {
		return nil, "", err
	}
	if rec.Sealed == nil {
		return &rec, "", nil
	}
	tok, _, err := s.kek.Open(s.aad(leaseID), *rec.Sealed)
	if err != nil {
		return nil, "", fmt.Errorf("the sealed token of lease %s: %w", leaseID, err)
	}
	return &rec, string(tok), nil
}

// erase replaces the record of leaseID by a tombstone: the token was
// revoked at revokedAt. The tombstone goes with the next sweep after the
// token's expiry, and lets a repeated revocation know it is done.
func (s *tokenStore) erase(leaseID string, revokedAt time.Time) error {
	return s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		v := b.Get([]byte(leaseID))
		if v == nil {
			return nil
		}
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return b.Delete([]byte(leaseID))
		}
		rec.Sealed, rec.RevokedAt = nil, revokedAt
		out, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(leaseID), out)
	})
}

// sweep deletes the records of tokens that have expired by now, and
// records that cannot be read. It returns how many it deleted.
func (s *tokenStore) sweep(now time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		n = 0
		b := tx.Bucket(bucketTokens)
		var dead [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rec tokenRecord
			if json.Unmarshal(v, &rec) != nil || !now.Before(rec.ExpiresAt) {
				dead = append(dead, append([]byte{}, k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	return n, err
}

// sealedCount returns how many records still hold a sealed token.
func (s *tokenStore) sealedCount() (int, error) {
	n := 0
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
			var rec tokenRecord
			if json.Unmarshal(v, &rec) == nil && rec.Sealed != nil {
				n++
			}
			return nil
		})
	})
	return n, err
}

// rewrap re-seals under the current KEK the tokens only the previous one
// opens, in one transaction: a crash leaves every record as it was or
// every one re-wrapped.
func (s *tokenStore) rewrap() (kek.Report, error) {
	var rep kek.Report
	err := s.db.Update(func(tx *bbolt.Tx) error {
		rep = kek.Report{}
		b := tx.Bucket(bucketTokens)
		changed := map[string][]byte{}
		err := b.ForEach(func(k, v []byte) error {
			var rec tokenRecord
			if json.Unmarshal(v, &rec) != nil || rec.Sealed == nil {
				return nil // a tombstone, or a record sweep deletes
			}
			out, re, err := s.kek.Rewrap(s.aad(string(k)), *rec.Sealed)
			switch {
			case errors.Is(err, kek.ErrOpen):
				rep.Unreadable++
				return nil
			case err != nil:
				return err
			case !re:
				rep.Current++
				return nil
			}
			rec.Sealed = &out
			nv, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			changed[string(k)] = nv
			rep.Rewrapped++
			return nil
		})
		if err != nil {
			return err
		}
		for k, v := range changed {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return kek.Report{}, err
	}
	return rep, nil
}
