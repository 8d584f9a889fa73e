package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases/clock"
)

// Cookie names. The __Host- prefix makes browsers insist on Secure,
// Path=/ and no Domain, so no other host (a sibling subdomain) can set or
// overwrite them.
const (
	sessionCookie = "__Host-valet-session"
	// loginCookie carries the double-submit token of the sign-in form,
	// which has no session to hold one.
	loginCookie = "__Host-valet-login"
	// ssoCookie binds an SSO sign-in in progress to the browser that
	// started it. It is SameSite=Lax: the provider's redirect back is a
	// cross-site navigation, on which Strict cookies are not sent.
	ssoCookie = "__Host-valet-sso"
)

// Sessions are bounded per operator and overall: a sign-in beyond
// maxSessionsPerOperator ends that operator's oldest session, and one
// beyond maxSessions ends the oldest session of the operator holding the
// most. An operator signing in again and again can only sign out
// themself.
const (
	maxSessionsPerOperator = 16
	maxSessions            = 10000
)

// session is one signed-in operator. Only the hash of its id is kept, so
// a dump of the server's memory does not hand out live cookies.
type session struct {
	key      [sha256.Size]byte
	op       broker.Operator
	who      string // identity.Key of the operator's name
	csrf     string
	created  time.Time
	authAt   time.Time // when the operator last proved who they are; zero: unknown
	lastSeen time.Time
	flashes  []flash
}

// flash is a one-time message shown on the next page.
type flash struct {
	Kind    string // ok, error, info
	Message string
}

// endReason says why a cookie no longer signs anyone in.
type endReason string

const (
	endNone    endReason = ""        // no cookie, or an unknown one
	endIdle    endReason = "idle"    // console.session_idle passed
	endExpired endReason = "expired" // console.session_max passed
)

// sessionStore holds sessions in memory: a restart signs everyone out.
type sessionStore struct {
	mu    sync.Mutex
	m     map[[sha256.Size]byte]*session
	clock clock.Clock
	idle  time.Duration
	max   time.Duration
	limit int // maxSessions; tests lower it
}

func newSessionStore(clk clock.Clock, idle, max time.Duration) *sessionStore {
	return &sessionStore{m: map[[sha256.Size]byte]*session{}, clock: clk, idle: idle, max: max, limit: maxSessions}
}

// randomToken returns 256 random bits, base64url-encoded.
func randomToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never returns an error on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// cookieKey hashes a cookie value. Values that are not 256-bit tokens
// are refused before hashing.
func cookieKey(v string) ([sha256.Size]byte, bool) {
	if len(v) != 43 {
		return [sha256.Size]byte{}, false
	}
	if _, err := base64.RawURLEncoding.DecodeString(v); err != nil {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256([]byte(v)), true
}

// create starts a session for op, who proved their identity at authAt
// (the zero time when that is unknown: the session is then never a fresh
// sign-in), and returns the cookie value (never stored).
func (s *sessionStore) create(op broker.Operator, authAt time.Time) (string, session) {
	id := randomToken()
	key, _ := cookieKey(id)
	now := s.clock.Now()
	if authAt.After(now) {
		authAt = now
	}
	se := &session{key: key, op: op, who: identity.Key(op.Name), csrf: randomToken(), created: now, authAt: authAt, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.limit {
		s.sweepLocked(now)
	}
	byOperator := map[string][]*session{}
	for _, o := range s.m {
		byOperator[o.who] = append(byOperator[o.who], o)
	}
	if own := byOperator[se.who]; len(own) >= maxSessionsPerOperator {
		delete(s.m, oldestSession(own).key)
	} else if len(s.m) >= s.limit {
		var heaviest []*session
		for _, list := range byOperator {
			if len(list) > len(heaviest) {
				heaviest = list
			}
		}
		delete(s.m, oldestSession(heaviest).key)
	}
	s.m[key] = se
	return id, se.snapshot()
}

func oldestSession(list []*session) *session {
	var oldest *session
	for _, o := range list {
		if oldest == nil || o.created.Before(oldest.created) {
			oldest = o
		}
	}
	return oldest
}

func (s *sessionStore) sweepLocked(now time.Time) {
	for k, se := range s.m {
		if s.ended(se, now) != endNone {
			delete(s.m, k)
		}
	}
}

func (s *sessionStore) ended(se *session, now time.Time) endReason {
	switch {
	case now.Sub(se.created) >= s.max:
		return endExpired
	case now.Sub(se.lastSeen) >= s.idle:
		return endIdle
	}
	return endNone
}

// use returns the session of the request's cookie and marks it active
// now (an operator action extends the session). A session past its idle
// or absolute timeout is deleted and its reason returned.
func (s *sessionStore) use(r *http.Request) (*session, endReason) {
	return s.lookup(r, true)
}

// observe is use for a request the operator did not make (a page's
// automatic refresh): the session is checked, and ends as use would end
// it, but is not marked active.
func (s *sessionStore) observe(r *http.Request) (*session, endReason) {
	return s.lookup(r, false)
}

// peek is use without marking the session active.
func (s *sessionStore) peek(r *http.Request) *session {
	se, _ := s.lookup(r, false)
	return se
}

func (s *sessionStore) lookup(r *http.Request, touch bool) (*session, endReason) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, endNone
	}
	key, ok := cookieKey(ck.Value)
	if !ok {
		return nil, endNone
	}
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.m[key]
	if se == nil {
		return nil, endNone
	}
	if why := s.ended(se, now); why != endNone {
		delete(s.m, key)
		return nil, why
	}
	if touch {
		se.lastSeen = now
	}
	cp := se.snapshot()
	return &cp, endNone
}

// snapshot copies a session for use outside the lock.
func (se *session) snapshot() session {
	cp := *se
	cp.flashes = slices.Clone(se.flashes)
	return cp
}

// end deletes the session of the request's cookie, if any, and reports
// whether there was one.
func (s *sessionStore) end(r *http.Request) bool {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	key, ok := cookieKey(ck.Value)
	if !ok {
		return false
	}
	return s.endKey(key)
}

func (s *sessionStore) endKey(key [sha256.Size]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[key]
	delete(s.m, key)
	return ok
}

// addFlash queues a message for the session's next page.
func (s *sessionStore) addFlash(key [sha256.Size]byte, f flash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if se := s.m[key]; se != nil && len(se.flashes) < 8 {
		se.flashes = append(se.flashes, f)
	}
}

// takeFlashes returns and clears the session's messages.
func (s *sessionStore) takeFlashes(key [sha256.Size]byte) []flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.m[key]
	if se == nil {
		return nil
	}
	f := se.flashes
	se.flashes = nil
	return f
}

// validCSRF compares a submitted token with the session's in constant
// time.
func (se *session) validCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(se.csrf)) == 1
}

// fresh reports whether the operator signed in recently enough to decide
// grants; a session whose sign-in time is unknown never is.
func (se *session) fresh(now time.Time, within time.Duration) bool {
	return !se.authAt.IsZero() && now.Sub(se.authAt) <= within
}

// setCookie writes a __Host- cookie: Secure, HttpOnly, Path=/, no Domain.
func setCookie(w http.ResponseWriter, name, value string, sameSite http.SameSite, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", Secure: true, HttpOnly: true, SameSite: sameSite, MaxAge: maxAge})
}

// clearCookie tells the browser to drop a cookie.
func clearCookie(w http.ResponseWriter, name string, sameSite http.SameSite) {
	setCookie(w, name, "", sameSite, -1)
}
