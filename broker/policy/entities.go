package policy

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"

	"github.com/valet-broker/valet/broker"
)

// Entity types of the policy model (see the package doc).
const (
	agentType  types.EntityType = "Agent"
	issuerType types.EntityType = "Issuer"
	actionType types.EntityType = "Action"
	roleType   types.EntityType = "Role"
)

// maxClaimDepth is how many records or sets may nest in principal.claims,
// principal.claims itself being the first. Deeper values are dropped: claims
// come from tokens, and nothing a policy needs nests this deep.
const maxClaimDepth = 16

// unknownIP stands in for a missing or unparseable source address, so that
// context.source_ip always has the ipaddr type and policies need no `has`.
var unknownIP = types.IPAddr(netip.PrefixFrom(netip.IPv4Unspecified(), 32))

var emptyRecord = types.NewRecord(nil)

var weekdays = [...]types.String{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// requestEntities is the entity store of one request: the principal and the
// role. A two-field struct instead of an EntityMap saves building a map on
// every mint. The Issuer parent need not be stored: `in` only needs the
// principal's parent list.
type requestEntities struct {
	principal, resource types.Entity
}

// Get implements types.EntityGetter.
func (r *requestEntities) Get(uid types.EntityUID) (types.Entity, bool) {
	switch uid {
	case r.principal.UID:
		return r.principal, true
	case r.resource.UID:
		return r.resource, true
	}
	return types.Entity{}, false
}

// cedarRequest translates a valet authorization request into Cedar's terms.
// req.Principal and req.Role must not be nil.
func (s *Set) cedarRequest(req broker.AuthzRequest) (cedar.Request, *requestEntities) {
	ents := &requestEntities{
		principal: s.principal(req.Principal),
		resource:  s.role(req.Role),
	}
	return cedar.Request{
		Principal: ents.principal.UID,
		Action:    types.NewEntityUID(actionType, types.String(req.Action)),
		Resource:  ents.resource.UID,
		Context:   contextRecord(req.Context),
	}, ents
}

// principalEntity builds Agent::"<id>" in Issuer::"<issuer>". Unless
// withClaims, principal.claims is left empty: see mayReadClaims.
func principalEntity(p *broker.Principal, withClaims bool) types.Entity {
	attrs := make(types.RecordMap, len(p.Attributes)+4)
	for name, value := range p.Attributes {
		attrs[types.String(name)] = types.String(value)
	}
	// Written after the mapped attributes, so the reserved names win.
	attrs["issuer"] = types.String(p.Issuer)
	attrs["iss"] = types.String(p.IssuerURL)
	attrs["sub"] = types.String(p.Subject)
	if withClaims {
		attrs["claims"] = claimsRecord(p.Claims)
	} else {
		attrs["claims"] = emptyRecord
	}

	var parents types.EntityUIDSet
	if p.Issuer != "" {
		parents = types.NewEntityUIDSet(types.NewEntityUID(issuerType, types.String(p.Issuer)))
	}
	return types.Entity{
		UID:        types.NewEntityUID(agentType, types.String(p.ID)),
		Parents:    parents,
		Attributes: types.NewRecord(attrs),
	}
}

// roleEntity builds Role::"<name>".
func roleEntity(r *broker.Role) types.Entity {
	labels := make(types.RecordMap, len(r.Labels))
	for k, v := range r.Labels {
		labels[types.String(k)] = types.String(v)
	}
	return types.Entity{
		UID: types.NewEntityUID(roleType, types.String(r.Name)),
		Attributes: types.NewRecord(types.RecordMap{
			"name":    types.String(r.Name),
			"backend": types.String(r.Backend),
			// Limits round down, requests (below) round up: both err
			// towards denying.
			"ttl_seconds":        types.Long(r.TTL.D() / time.Second),
			"max_ttl_seconds":    types.Long(r.MaxTTL.D() / time.Second),
			"approvals_required": types.Long(r.Approval.Required),
			"labels":             types.NewRecord(labels),
			"scopes":             stringSet(r.Scopes),
			"audience":           stringSet(r.Audience),
		}),
	}
}

// mayReadClaims reports whether a policy file could read principal.claims.
// Every way to name an attribute in Cedar (.claims, has claims,
// ["claims"], has "claims") spells "claims" in the source, unless a string
// escape spells it, and escapes need a backslash. The test is conservative:
// a comment that mentions claims also counts.
func mayReadClaims(src []byte) bool {
	return bytes.Contains(src, []byte("claims")) || bytes.IndexByte(src, '\\') >= 0
}

// entityCache holds entities by key (a role's name, an agent's id), each
// beside a copy of the inputs it was built from. Roles are configuration
// and an agent presents the same identity on every mint, so the same few
// entities are asked for again and again; building one costs several
// microseconds and allocations, comparing its inputs with the cached copy a
// fraction of that. An entry is used only when its inputs equal the
// request's, so a role changed by a config reload, or an agent whose mapped
// attributes changed, is never given a stale entity.
type entityCache[In any] struct {
	m sync.Map     // key → *cachedEntity[In]
	n atomic.Int32 // entries, to bound the cache
}

// maxCachedEntities bounds each cache. A full cache starts afresh, so it
// holds the entities in use now rather than the first ones seen.
const maxCachedEntities = 1024

type cachedEntity[In any] struct {
	in     In
	entity types.Entity
}

// load returns the entity cached under key if same reports that the inputs
// it was built from are the request's.
func (c *entityCache[In]) load(key string, same func(cached *In) bool) (types.Entity, bool) {
	if v, ok := c.m.Load(key); ok {
		if e := v.(*cachedEntity[In]); same(&e.in) {
			return e.entity, true
		}
	}
	return types.Entity{}, false
}

// store caches ent under key; in is a copy of the inputs it was built from
// that nobody changes afterwards.
func (c *entityCache[In]) store(key string, in In, ent types.Entity) {
	if c.n.Load() >= maxCachedEntities {
		c.m.Clear()
		c.n.Store(0)
	}
	if _, loaded := c.m.Swap(key, &cachedEntity[In]{in: in, entity: ent}); !loaded {
		c.n.Add(1)
	}
}

// role returns the entity of r, from the cache when r is unchanged.
func (s *Set) role(r *broker.Role) types.Entity {
	if ent, ok := s.roles.load(r.Name, func(cached *broker.Role) bool { return sameRoleAttributes(cached, r) }); ok {
		return ent
	}
	ent := roleEntity(r)
	s.roles.store(r.Name, copyRole(r), ent)
	return ent
}

// principalInputs are the fields of a Principal that principalEntity reads
// when it leaves out the claims.
type principalInputs struct {
	id, issuer, issuerURL, subject string
	attributes                     map[string]string
}

// principal returns the entity of p. Unless the set reads claims, it comes
// from the cache when p's identity and mapped attributes are unchanged.
// With claims it is always built: claims such as jti, iat and exp differ
// from one attestation to the next, so a cached entity would not be used.
func (s *Set) principal(p *broker.Principal) types.Entity {
	if s.needClaims {
		return principalEntity(p, true)
	}
	same := func(c *principalInputs) bool {
		return c.id == p.ID && c.issuer == p.Issuer && c.issuerURL == p.IssuerURL && c.subject == p.Subject &&
			maps.Equal(c.attributes, p.Attributes)
	}
	if ent, ok := s.principals.load(p.ID, same); ok {
		return ent
	}
	ent := principalEntity(p, false)
	s.principals.store(p.ID, principalInputs{p.ID, p.Issuer, p.IssuerURL, p.Subject, maps.Clone(p.Attributes)}, ent)
	return ent
}

// sameRoleAttributes reports whether a and b give the same role entity.
// A nil and an empty label map (or list) give the same entity.
func sameRoleAttributes(a, b *broker.Role) bool {
	return a.Name == b.Name && a.Backend == b.Backend &&
		a.TTL == b.TTL && a.MaxTTL == b.MaxTTL &&
		a.Approval.Required == b.Approval.Required &&
		maps.Equal(a.Labels, b.Labels) &&
		slices.Equal(a.Scopes, b.Scopes) && slices.Equal(a.Audience, b.Audience)
}

// copyRole copies the fields of r that roleEntity reads, so later changes
// to r's maps and slices cannot change the cached copy.
func copyRole(r *broker.Role) broker.Role {
	return broker.Role{
		Name:     r.Name,
		Backend:  r.Backend,
		TTL:      r.TTL,
		MaxTTL:   r.MaxTTL,
		Approval: r.Approval,
		Labels:   maps.Clone(r.Labels),
		Scopes:   slices.Clone(r.Scopes),
		Audience: slices.Clone(r.Audience),
	}
}

// contextMaps holds scratch maps for contextRecord: types.NewRecord copies
// the map it is given, so the map itself can serve the next request.
var contextMaps = sync.Pool{New: func() any { return make(types.RecordMap, 9) }}

// contextRecord builds the context record. Time comes only from c.Now, never
// from the wall clock, so decisions are reproducible in tests and audits.
func contextRecord(c broker.AuthzContext) types.Record {
	now := c.Now.UTC()
	m := contextMaps.Get().(types.RecordMap)
	m["ttl_seconds"] = types.Long(ceilSeconds(c.TTL))
	m["reason"] = types.String(c.Reason)
	m["source_ip"] = sourceIP(c.SourceIP)
	m["now"] = types.NewDatetime(now)
	m["now_unix"] = types.Long(now.Unix())
	m["hour"] = types.Long(now.Hour())
	m["weekday"] = weekdays[now.Weekday()]
	m["risk"] = types.Long(c.Risk)
	m["approvals"] = types.Long(c.Approvals)
	r := types.NewRecord(m)
	clear(m)
	contextMaps.Put(m)
	return r
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	s := d / time.Second
	if d%time.Second > 0 {
		s++
	}
	return int64(s)
}

// sourceIP parses an address, with or without a port, as a single-address
// ipaddr. IPv4-mapped IPv6 addresses (as a dual-stack listener reports IPv4
// clients) are unmapped, so IPv4 ranges match them. Anything else, including
// "", gives 0.0.0.0.
func sourceIP(s string) types.IPAddr {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return unknownIP
		}
		addr = ap.Addr()
	}
	addr = addr.Unmap().WithZone("") // Cedar has no zones
	return types.IPAddr(netip.PrefixFrom(addr, addr.BitLen()))
}

func stringSet(values []string) types.Set {
	vs := make([]types.Value, len(values))
	for i, v := range values {
		vs[i] = types.String(v)
	}
	return types.NewSet(vs...)
}

// claimsRecord converts verified JSON claims to a Cedar record; see the
// package doc for the mapping. It never fails: values Cedar cannot hold, and
// values nested deeper than maxClaimDepth, are left out.
func claimsRecord(claims map[string]any) types.Record {
	return claimRecord(claims, 1)
}

// claimRecord converts an object that is the level-th nested container.
func claimRecord(m map[string]any, level int) types.Record {
	rm := make(types.RecordMap, len(m))
	for k, v := range m {
		if cv, ok := claimValue(v, level); ok {
			rm[types.String(k)] = cv
		}
	}
	return types.NewRecord(rm)
}

// claimValue converts one claim value that sits inside level containers. It
// reports false for values to leave out.
func claimValue(v any, level int) (types.Value, bool) {
	switch v := v.(type) {
	case string:
		return types.String(v), true
	case bool:
		return types.Boolean(v), true
	case float64:
		return numberValue(v), true
	case float32:
		return numberValue(float64(v)), true
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return types.Long(i), true
		}
		if f, err := v.Float64(); err == nil {
			return numberValue(f), true
		}
		return types.String(v.String()), true
	case int:
		return types.Long(v), true
	case int8:
		return types.Long(v), true
	case int16:
		return types.Long(v), true
	case int32:
		return types.Long(v), true
	case int64:
		return types.Long(v), true
	case uint8:
		return types.Long(v), true
	case uint16:
		return types.Long(v), true
	case uint32:
		return types.Long(v), true
	case uint:
		return uintValue(uint64(v)), true
	case uint64:
		return uintValue(v), true
	case map[string]any:
		if level >= maxClaimDepth {
			return nil, false
		}
		return claimRecord(v, level+1), true
	case map[string]string:
		if level >= maxClaimDepth {
			return nil, false
		}
		rm := make(types.RecordMap, len(v))
		for k, s := range v {
			rm[types.String(k)] = types.String(s)
		}
		return types.NewRecord(rm), true
	case []any:
		if level >= maxClaimDepth {
			return nil, false
		}
		vs := make([]types.Value, 0, len(v))
		for _, e := range v {
			if cv, ok := claimValue(e, level+1); ok {
				vs = append(vs, cv)
			}
		}
		return types.NewSet(vs...), true
	case []string:
		if level >= maxClaimDepth {
			return nil, false
		}
		return stringSet(v), true
	default: // nil, and types JSON does not produce
		return nil, false
	}
}

// numberValue keeps integral numbers as Long and writes others (fractions,
// and integers beyond 64 bits) as decimal Strings, since Cedar has no float.
func numberValue(f float64) types.Value {
	// -2^63 is exact in float64; 2^63 is the first value out of range.
	if f == math.Trunc(f) && f >= -(1<<63) && f < (1<<63) {
		return types.Long(int64(f))
	}
	return types.String(strconv.FormatFloat(f, 'f', -1, 64))
}

func uintValue(u uint64) types.Value {
	if u > math.MaxInt64 {
		return types.String(strconv.FormatUint(u, 10))
	}
	return types.Long(int64(u))
}
