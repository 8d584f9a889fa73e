package attest

import (
	"crypto/sha256"
	"sync"
	"unsafe"

	"github.com/valet-broker/valet/broker"
)

// verifiedCache remembers recently verified attestations by the SHA-256 of
// the token, so an agent presenting the same token again (a Kubernetes
// token lives for an hour) skips decoding and the signature check. It never
// extends a token's life: every use re-applies the time rules (exp, nbf,
// iat and max_token_age) to the cached claims, and an entry is used only
// while the key that verified it is still the issuer's current key for
// its kid. Tokens of issuers with require_jti are never cached, since each
// use must consume the jti.
type verifiedCache struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]*cachedToken
	max int
}

type cachedToken struct {
	ti       *trustedIssuer
	key      *publicKey
	kid, alg string
	claims   map[string]any
	p        *broker.Principal
}

func newVerifiedCache(max int) *verifiedCache {
	if max <= 0 {
		return nil
	}
	return &verifiedCache{m: make(map[[sha256.Size]byte]*cachedToken, max), max: max}
}

func (c *verifiedCache) get(sum [sha256.Size]byte) *cachedToken {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[sum]
}

func (c *verifiedCache) put(sum [sha256.Size]byte, e *cachedToken) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		// Evict an arbitrary entry (map order is random): cheap, and a
		// busy agent simply re-verifies once.
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[sum] = e
}

func (c *verifiedCache) drop(sum [sha256.Size]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, sum)
	c.mu.Unlock()
}

// copyPrincipal returns a shallow copy: callers may not modify the shared
// Claims and Attributes maps.
func copyPrincipal(p *broker.Principal) *broker.Principal {
	cp := *p
	return &cp
}

// stringBytes is s as a byte slice without a copy, for reading only (a
// token is hashed on every request to look it up; copying it first would
// cost an allocation of its size). The slice must never be written to.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
