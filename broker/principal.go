package broker

import (
	"context"
	"strings"
	"time"
	"unicode"

	"github.com/valet-broker/valet/leases"
)

// Principal is a verified workload identity: who is asking, according to a
// trusted attestation issuer. It is derived from a token on every request and
// never registered ahead of time.
type Principal struct {
	// ID is the stable agent id, "<issuer-name>/<sub>".
	ID string
	// Issuer is the name of the trusted issuer in valet's configuration.
	Issuer string
	// IssuerURL is the token's iss claim.
	IssuerURL string
	// Subject is the token's subject (sub, or the issuer's subject claim).
	Subject string
	// Claims holds every verified claim of the token, as decoded from JSON.
	Claims map[string]any
	// Attributes are the issuer's mapped attributes, e.g. namespace,
	// service_account, repository. Policies see them as principal attributes.
	Attributes map[string]string
	// Lineage identifies the attestation the principal came from, so leases
	// derived from it can be found and revoked together.
	Lineage Lineage
	// IssuedAt and ExpiresAt are the token's iat (zero if absent) and exp.
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// MaxAgentIDBytes bounds an agent id: an issuer name (63 bytes), '/', and
// a subject of at most 256 characters of up to 4 bytes each.
const MaxAgentIDBytes = 63 + 1 + 256*4

// AgentIDRule describes the shape of an agent id for error messages.
const AgentIDRule = "<issuer-name>/<subject> as in a lease's agent_id, without control characters"

// ValidAgentID reports whether id has the shape verification gives
// Principal.ID: an issuer name of the configured names' syntax, '/', and a
// non-empty subject without control characters, at most MaxAgentIDBytes
// in all. Filters and selectors check it, so a value that can be no
// agent's is refused rather than matched against nothing.
func ValidAgentID(id string) bool {
	iss, sub, ok := strings.Cut(id, "/")
	return ok && len(id) <= MaxAgentIDBytes && ValidName(iss) && sub != "" && strings.IndexFunc(sub, unicode.IsControl) < 0
}

// LineageRule describes the shape of a lineage id for error messages,
// which read "<field> must " + LineageRule.
const LineageRule = "start with jti:, pod:, run: or spiffe: and name one (jti:<issuer>#<jti>, pod:<uid>, run:<issuer>#<run_id>, spiffe:<id>), " +
	"at most 2048 bytes without control characters"

// lineageKinds are the prefixes of leases.Lineage.IDs.
var lineageKinds = []string{"jti:", "pod:", "run:", "spiffe:"}

// ValidLineage reports whether id has the shape of a lineage id
// (leases.Lineage.IDs): a known kind prefix and something after it, at
// most 2048 bytes, without control characters.
func ValidLineage(id string) bool {
	if len(id) > 2048 || strings.IndexFunc(id, unicode.IsControl) >= 0 {
		return false
	}
	for _, k := range lineageKinds {
		if strings.HasPrefix(id, k) && len(id) > len(k) {
			return true
		}
	}
	return false
}

// Lineage identifies the attestation a principal came from (the lease
// domain's leases.Lineage), named here so that a Verifier can fill it in
// without importing the lease store.
type Lineage = leases.Lineage

// Verifier turns a raw attestation into a Principal.
type Verifier interface {
	// Verify checks the token against the trusted issuers. It returns an
	// *Error with code EUNAUTHORIZED (the message says which rule failed) or
	// ETOOLARGE (the token is over the size limit); EUNAVAILABLE when an
	// issuer's keys cannot be fetched.
	Verify(ctx context.Context, token string) (*Principal, error)
}
