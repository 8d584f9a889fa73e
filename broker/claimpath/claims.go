// Package claimpath reads the claims of a verified JWT (RFC 7519) by name,
// the one way valet's configuration names a claim: `claim_mappings`,
// `subject_claim`, an operator issuer's `name_claim` and `groups_claim`,
// and a role's `requester_claims` all accept a dot-separated path into
// nested claims ("realm_access.roles", "ext.team").
package claimpath

// Lookup finds a claim by a dot-separated path ("ext.team"). A claim whose
// own name contains dots ("kubernetes.io") is matched whole before the path
// is split at its dots, so top-level names with dots keep working. It
// reports false when no claim is at the path.
func Lookup(m map[string]any, path string) (any, bool) {
	if v, ok := m[path]; ok {
		return v, true
	}
	for i := 0; i < len(path); i++ {
		if path[i] != '.' {
			continue
		}
		if sub, ok := m[path[:i]].(map[string]any); ok {
			if v, ok := Lookup(sub, path[i+1:]); ok {
				return v, true
			}
		}
	}
	return nil, false
}
