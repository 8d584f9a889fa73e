// Package gcptest is a local stand-in for Google's IAM Service Account
// Credentials API (iamcredentials.googleapis.com, v1) and for the parts of
// Google's OAuth 2.0 service around it, for valet's tests, benchmarks and
// `make run-cloud`: no Google is reachable from here. The real
// google.golang.org/api/iamcredentials/v1 client and Application Default
// Credentials talk to it, and it checks what Google checks:
//
//   - POST /token is the OAuth 2.0 token endpoint of a service account key
//     file (RFC 7523 JWT bearer grant): the assertion must be RS256 with the
//     key of the file KeyFile holds, iss its client_email, aud the token
//     URL, a scope, and at most an hour between iat and exp. It answers an
//     access token of an hour for valet's own identity (CallerEmail).
//   - POST /v1/projects/-/serviceAccounts/{email or unique id}
//     :generateAccessToken and :generateIdToken take a bearer access token
//     (401 UNAUTHENTICATED without a valid one, 403 when its scopes do not
//     include cloud-platform or iam); the caller, then each delegate in
//     turn, must hold roles/iam.serviceAccountTokenCreator on the next
//     account of the chain (403 PERMISSION_DENIED "... (or it may not
//     exist)"); an unknown account is 404 NOT_FOUND. The request is JSON
//     with the documented fields only (400 INVALID_ARGUMENT names an
//     unknown one); "projects/-" is required; an access token needs at
//     least one well-formed scope and a lifetime ("3600s") between 1 s and
//     3,600 s, or 43,200 s for an account the organization policy
//     constraints/iam.allowServiceAccountCredentialLifetimeExtension
//     allows (ServiceAccountOptions.ExtendedLifetime), else 400
//     INVALID_ARGUMENT; an ID token needs an audience and lives one hour.
//     Errors are Google's JSON error shape: {"error": {"code", "message",
//     "status", "details"}}.
//   - GET or POST /tokeninfo with access_token or id_token says whether a
//     token is valid now (Google's tokeninfo shape), or 400 invalid_token
//     once it has expired. Nothing revokes a token: as at Google, a
//     service-account token lives until its expiry.
//   - GET /oauth2/v3/certs serves the public key of the ID tokens (JWKS).
package gcptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Google's documented limits.
const (
	// MaxLifetime is the longest access token by default (3,600 s).
	MaxLifetime = time.Hour
	// MaxExtendedLifetime is the longest access token for a service
	// account the lifetime-extension organization policy allows.
	MaxExtendedLifetime = 12 * time.Hour
	// IDTokenLifetime is the life of every ID token.
	IDTokenLifetime = time.Hour
	// IDTokenIssuer is the iss of the ID tokens.
	IDTokenIssuer = "https://accounts.google.com"
	// CloudPlatformScope lets a token call the IAM Credentials API.
	CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"
	iamScope           = "https://www.googleapis.com/auth/iam"
	jwtBearerGrant     = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	maxBody            = 64 << 10
)

// Config configures a Server. Zero values take the defaults noted.
type Config struct {
	// Project is the project of the service accounts (default
	// valet-test).
	Project string
	// Dir is where Listen writes the key file (made if missing; default:
	// a new temporary directory, removed by Close).
	Dir string
	// Now is the server's clock: token lifetimes, expiry and assertion
	// checks (default time.Now).
	Now func() time.Time
}

// ServiceAccountOptions describe a service account.
type ServiceAccountOptions struct {
	// TokenCreators are the principals (service account emails) granted
	// roles/iam.serviceAccountTokenCreator on the account (nil: only
	// CallerEmail, valet's identity; empty: nobody).
	TokenCreators []string
	// ExtendedLifetime: the organization policy
	// constraints/iam.allowServiceAccountCredentialLifetimeExtension lists
	// the account, so its access tokens may live up to 12 hours.
	ExtendedLifetime bool
}

// Token is a token the server issued.
type Token struct {
	Kind           string // "access" or "id"
	Token          string
	ServiceAccount string // whose token it is
	Scopes         []string
	Audience       string
	Delegates      []string
	IssuedAt       time.Time
	Expires        time.Time
}

// Server is a running test server.
type Server struct {
	// URL is the base URL of every endpoint (http://127.0.0.1:PORT).
	URL string
	// CallerEmail is valet's own identity: the service account of KeyFile.
	CallerEmail string
	// KeyFile is a service account key file (Google's JSON) of CallerEmail
	// whose token_uri is this server: GOOGLE_APPLICATION_CREDENTIALS
	// pointing at it makes Application Default Credentials use it.
	KeyFile string
	Project string

	now     func() time.Time
	dir     string
	ownDir  bool
	key     *rsa.PrivateKey // of CallerEmail
	keyID   string
	idKey   *rsa.PrivateKey // signs ID tokens
	idKeyID string

	mu       sync.Mutex
	accounts map[string]*account // by email
	byID     map[string]string   // unique id -> email
	tokens   map[string]*Token
	issued   []*Token
	fail     map[string]int // method -> HTTP status
	calls    map[string]int // method -> requests that reached it
	addr     string
	srv      *http.Server
	handled  atomic.Int64
	busy     atomic.Int64
}

type account struct {
	email, uniqueID string
	creators        map[string]bool
	extended        bool
}

// New returns a server that is not yet listening; call Listen.
func New(c Config) (*Server, error) {
	if c.Project == "" {
		c.Project = "valet-test"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	s := &Server{Project: c.Project, now: c.Now, dir: c.Dir,
		accounts: map[string]*account{}, byID: map[string]string{}, tokens: map[string]*Token{}, fail: map[string]int{}, calls: map[string]int{}}
	var err error
	if s.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	if s.idKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	s.keyID, s.idKeyID = randomHex(20), randomHex(20)
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "gcptest"); err != nil {
			return nil, err
		}
		s.ownDir = true
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	s.CallerEmail = "valet@" + c.Project + ".iam.gserviceaccount.com"
	s.addAccount(s.CallerEmail, ServiceAccountOptions{TokenCreators: []string{}})
	return s, nil
}

// Listen starts serving on addr ("127.0.0.1:0" for a free port) and, the
// first time, writes KeyFile with this server as its token_uri.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	first := s.addr == ""
	s.addr = ln.Addr().String()
	s.URL = "http://" + s.addr
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	if first {
		if err := s.writeKeyFile(); err != nil {
			ln.Close()
			return err
		}
	}
	go srv.Serve(ln)
	return nil
}

// Stop closes the listener and every connection: clients get connection
// refused, as in an outage. Restart listens again on the same address.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Restart serves again on the address of the last Listen.
func (s *Server) Restart() error {
	var err error
	for i := 0; i < 50; i++ { // the old socket may linger for a moment
		if err = s.Listen(s.addr); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Close stops the server and removes the directory it made.
func (s *Server) Close() {
	s.Stop()
	if s.ownDir {
		os.RemoveAll(s.dir)
	}
}

// CreateServiceAccount adds the service account name@PROJECT.iam
// .gserviceaccount.com and returns its email.
func (s *Server) CreateServiceAccount(name string, o ServiceAccountOptions) string {
	email := name + "@" + s.Project + ".iam.gserviceaccount.com"
	if o.TokenCreators == nil {
		o.TokenCreators = []string{s.CallerEmail}
	}
	s.addAccount(email, o)
	return email
}

func (s *Server) addAccount(email string, o ServiceAccountOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &account{email: email, uniqueID: randomDigits(21), creators: map[string]bool{}, extended: o.ExtendedLifetime}
	for _, c := range o.TokenCreators {
		a.creators[c] = true
	}
	s.accounts[email] = a
	s.byID[a.uniqueID] = email
}

// UniqueID returns the numeric unique id of a service account ("" when
// there is none).
func (s *Server) UniqueID(email string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.accounts[email]; a != nil {
		return a.uniqueID
	}
	return ""
}

// Fail makes every later request of method ("generateAccessToken",
// "generateIdToken" or "token") answer with Google's error of the HTTP
// status (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...), until Fail(method,
// 0).
func (s *Server) Fail(method string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		delete(s.fail, method)
		return
	}
	s.fail[method] = status
}

// Calls returns how many requests of method reached the server.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// Tokens returns the tokens issued for a service account, oldest first.
func (s *Server) Tokens(email string) []Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Token
	for _, t := range s.issued {
		if t.ServiceAccount == email {
			out = append(out, *t)
		}
	}
	return out
}

// Valid reports whether a token the server issued is valid now.
func (s *Server) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[token]
	return t != nil && s.now().Before(t.Expires)
}

// Handled returns how many requests the server answered and the time it
// spent answering them (its own response time, for benchmarks).
func (s *Server) Handled() (int64, time.Duration) {
	return s.handled.Load(), time.Duration(s.busy.Load())
}

// Env is the environment that points Application Default Credentials at
// KeyFile.
func (s *Server) Env() []string {
	return []string{"GOOGLE_APPLICATION_CREDENTIALS=" + s.KeyFile}
}

// writeKeyFile writes CallerEmail's key as Google issues service account
// keys, with this server as token_uri.
func (s *Server) writeKeyFile() error {
	der, err := x509.MarshalPKCS8PrivateKey(s.key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	id := s.accounts[s.CallerEmail].uniqueID
	s.mu.Unlock()
	b, err := json.MarshalIndent(map[string]string{
		"type": "service_account", "project_id": s.Project, "private_key_id": s.keyID,
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": s.CallerEmail, "client_id": id,
		"auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": s.URL + "/token",
		"universe_domain": "googleapis.com",
	}, "", "  ")
	if err != nil {
		return err
	}
	s.KeyFile = filepath.Join(s.dir, "valet-service-account.json")
	return os.WriteFile(s.KeyFile, b, 0o600)
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() {
		s.handled.Add(1)
		s.busy.Add(int64(time.Since(start)))
	}()
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	switch p := r.URL.Path; {
	case p == "/token":
		s.handleToken(w, r)
	case p == "/tokeninfo" || p == "/oauth2/v3/tokeninfo":
		s.handleTokenInfo(w, r)
	case p == "/oauth2/v3/certs":
		s.handleCerts(w)
	case strings.HasPrefix(p, "/v1/projects/"):
		s.handleCredentials(w, r)
	default:
		googleError(w, http.StatusNotFound, "The requested URL "+p+" was not found on this server.", nil)
	}
}

// statusNames are google.rpc.Code names by HTTP status.
var statusNames = map[int]string{
	400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
	409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}

// googleError answers Google's JSON error shape.
func googleError(w http.ResponseWriter, code int, message string, details []any) {
	status := statusNames[code]
	if status == "" {
		status = "UNKNOWN"
	}
	body := map[string]any{"code": code, "message": message, "status": status}
	if len(details) > 0 {
		body["details"] = details
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://accounts.google.com/"`)
	}
	writeJSON(w, code, map[string]any{"error": body})
}

func errorInfo(reason string, metadata map[string]string) []any {
	d := map[string]any{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "iam.googleapis.com"}
	if metadata != nil {
		d["metadata"] = metadata
	}
	return []any{d}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// injected answers an injected failure of method, if any, and counts the
// call.
func (s *Server) injected(w http.ResponseWriter, method string) bool {
	s.mu.Lock()
	s.calls[method]++
	status := s.fail[method]
	s.mu.Unlock()
	if status == 0 {
		return false
	}
	msg := "The service is currently unavailable."
	if status == http.StatusTooManyRequests {
		msg = "Quota exceeded for quota metric 'Generate credentials requests' of service 'iamcredentials.googleapis.com'."
	}
	googleError(w, status, msg, nil)
	return true
}

// handleToken is the OAuth 2.0 token endpoint for CallerEmail's key
// (RFC 7523 section 2.1; errors per RFC 6749 section 5.2).
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if s.injected(w, "token") {
		return
	}
	oauthErr := func(code, desc string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthErr("invalid_request", "POST a form body")
		return
	}
	if g := r.PostForm.Get("grant_type"); g != jwtBearerGrant {
		oauthErr("unsupported_grant_type", "Invalid grant_type: "+g)
		return
	}
	now := s.now()
	tok, err := jwt.Parse([]byte(r.PostForm.Get("assertion")), jwt.WithKey(jwa.RS256, &s.key.PublicKey), jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })), jwt.WithAcceptableSkew(time.Minute),
		jwt.WithIssuer(s.CallerEmail), jwt.WithAudience(s.URL+"/token"), jwt.WithRequiredClaim("exp"), jwt.WithRequiredClaim("iat"))
	if err != nil {
		oauthErr("invalid_grant", "Invalid JWT: "+err.Error())
		return
	}
	if tok.Expiration().Sub(tok.IssuedAt()) > time.Hour {
		oauthErr("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
		return
	}
	scope, _ := tok.Get("scope")
	scopes := strings.Fields(fmt.Sprint(scope))
	if scope == nil || len(scopes) == 0 {
		oauthErr("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
		return
	}
	t := s.issue(&Token{Kind: "access", ServiceAccount: s.CallerEmail, Scopes: scopes, IssuedAt: now, Expires: now.Add(time.Hour)}, "ya29.c.")
	writeJSON(w, http.StatusOK, map[string]any{"access_token": t.Token, "expires_in": 3599, "token_type": "Bearer"})
}

// issue records t with a new random token value of the given prefix.
func (s *Server) issue(t *Token, prefix string) *Token {
	if t.Token == "" {
		t.Token = prefix + randomString(96)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[t.Token] = t
	s.issued = append(s.issued, t)
	return t
}

// accessRequest and idRequest are the documented request bodies.
type accessRequest struct {
	Delegates []string `json:"delegates"`
	Scope     []string `json:"scope"`
	Lifetime  string   `json:"lifetime"`
}

type idRequest struct {
	Delegates                  []string `json:"delegates"`
	Audience                   string   `json:"audience"`
	IncludeEmail               bool     `json:"includeEmail"`
	OrganizationNumberIncluded bool     `json:"organizationNumberIncluded"`
}

var (
	lifetimePattern = regexp.MustCompile(`^([0-9]+)(\.[0-9]{1,9})?s$`)
	scopePattern    = regexp.MustCompile(`^https://www\.googleapis\.com/auth/[a-z0-9._-]+(/[a-z0-9._-]+)*$`)
	unknownField    = regexp.MustCompile(`unknown field "([^"]*)"`)
)

// handleCredentials serves generateAccessToken and generateIdToken.
func (s *Server) handleCredentials(w http.ResponseWriter, r *http.Request) {
	name, method, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/"), ":")
	if !ok || r.Method != http.MethodPost || method != "generateAccessToken" && method != "generateIdToken" {
		googleError(w, http.StatusNotFound, "The requested URL "+r.URL.Path+" was not found on this server.", nil)
		return
	}
	if s.injected(w, method) {
		return
	}
	caller, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	target, msg := parseName(name)
	if msg != "" {
		googleError(w, http.StatusBadRequest, msg, nil)
		return
	}
	var delegates []string
	var access accessRequest
	var id idRequest
	into := any(&access)
	if method == "generateIdToken" {
		into = &id
	}
	body, err := io.ReadAll(r.Body)
	if err == nil {
		d := json.NewDecoder(bytes.NewReader(body))
		d.DisallowUnknownFields()
		err = d.Decode(into)
	}
	if err != nil {
		msg := "Invalid JSON payload received."
		if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
			msg += fmt.Sprintf(" Unknown name %q: Cannot find field.", m[1])
		}
		googleError(w, http.StatusBadRequest, msg, errorInfo("INVALID_ARGUMENT", nil))
		return
	}
	delegates = access.Delegates
	if method == "generateIdToken" {
		delegates = id.Delegates
	}
	chain := make([]string, 0, len(delegates)+1)
	for _, d := range delegates {
		email, msg := parseName(d)
		if msg != "" {
			googleError(w, http.StatusBadRequest, "Invalid form of delegates: "+msg, nil)
			return
		}
		chain = append(chain, email)
	}
	chain = append(chain, target)
	permission := "iam.serviceAccounts.getAccessToken"
	if method == "generateIdToken" {
		permission = "iam.serviceAccounts.getOpenIdToken"
	}
	acct, status, msg := s.authorize(caller, chain, permission)
	if status != 0 {
		var details []any
		if status == http.StatusForbidden {
			details = errorInfo("IAM_PERMISSION_DENIED", map[string]string{"permission": permission})
		}
		googleError(w, status, msg, details)
		return
	}
	now := s.now()
	if method == "generateIdToken" {
		s.generateIDToken(w, acct, id, chain[:len(chain)-1], now)
		return
	}
	s.generateAccessToken(w, acct, access, chain[:len(chain)-1], now)
}

func (s *Server) generateAccessToken(w http.ResponseWriter, a account, req accessRequest, delegates []string, now time.Time) {
	if len(req.Scope) == 0 {
		googleError(w, http.StatusBadRequest, "Scope required.", nil)
		return
	}
	for _, sc := range req.Scope {
		if !scopePattern.MatchString(sc) && sc != "openid" && sc != "email" && sc != "profile" {
			googleError(w, http.StatusBadRequest, fmt.Sprintf("Invalid scope: %q is not an OAuth 2.0 scope for Google APIs.", sc), nil)
			return
		}
	}
	lifetime := MaxLifetime
	if req.Lifetime != "" {
		m := lifetimePattern.FindStringSubmatch(req.Lifetime)
		if m == nil {
			googleError(w, http.StatusBadRequest, fmt.Sprintf("Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), Field 'lifetime', Illegal duration format; duration must end with 's': %q", req.Lifetime), nil)
			return
		}
		secs, _ := strconv.ParseInt(m[1], 10, 64)
		lifetime = time.Duration(secs) * time.Second
		max := MaxLifetime
		if a.extended {
			max = MaxExtendedLifetime
		}
		if secs < 1 || lifetime > max {
			googleError(w, http.StatusBadRequest, fmt.Sprintf("The lifetime of the access token must be between 1s and %ds; longer than 3600s needs the service account in the organization policy constraint constraints/iam.allowServiceAccountCredentialLifetimeExtension.", int(max/time.Second)),
				errorInfo("INVALID_ARGUMENT", map[string]string{"field": "lifetime"}))
			return
		}
	}
	t := s.issue(&Token{Kind: "access", ServiceAccount: a.email, Scopes: req.Scope, Delegates: delegates, IssuedAt: now, Expires: now.Add(lifetime)}, "ya29.c.")
	writeJSON(w, http.StatusOK, map[string]string{"accessToken": t.Token, "expireTime": t.Expires.UTC().Format(time.RFC3339)})
}

func (s *Server) generateIDToken(w http.ResponseWriter, a account, req idRequest, delegates []string, now time.Time) {
	if req.Audience == "" {
		googleError(w, http.StatusBadRequest, "Audience required.", nil)
		return
	}
	b := jwt.NewBuilder().Issuer(IDTokenIssuer).Audience([]string{req.Audience}).Subject(a.uniqueID).
		IssuedAt(now).Expiration(now.Add(IDTokenLifetime)).Claim("azp", a.uniqueID)
	if req.IncludeEmail {
		b = b.Claim("email", a.email).Claim("email_verified", true)
	}
	tok, err := b.Build()
	if err != nil {
		googleError(w, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	key, err := jwk.FromRaw(s.idKey)
	if err == nil {
		err = key.Set(jwk.KeyIDKey, s.idKeyID)
	}
	var signed []byte
	if err == nil {
		signed, err = jwt.Sign(tok, jwt.WithKey(jwa.RS256, key))
	}
	if err != nil {
		googleError(w, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	t := s.issue(&Token{Kind: "id", Token: string(signed), ServiceAccount: a.email, Audience: req.Audience, Delegates: delegates,
		IssuedAt: now, Expires: now.Add(IDTokenLifetime)}, "")
	writeJSON(w, http.StatusOK, map[string]string{"token": t.Token})
}

// parseName reads projects/-/serviceAccounts/{email or unique id} and
// returns the account's email as given (a unique id is resolved later),
// or Google's message for a malformed name.
func parseName(name string) (string, string) {
	rest, ok := strings.CutPrefix(name, "projects/")
	project, acct, ok2 := strings.Cut(rest, "/serviceAccounts/")
	switch {
	case !ok || !ok2 || acct == "" || strings.Contains(acct, "/"):
		return "", fmt.Sprintf("Invalid resource name %q: expected projects/-/serviceAccounts/{ACCOUNT_EMAIL_OR_UNIQUEID}.", name)
	case project != "-":
		return "", fmt.Sprintf("Invalid resource name %q: the - wildcard character is required for the project.", name)
	}
	return acct, ""
}

// authenticate reads the bearer token of a request and returns whose it
// is, or answers 401 or 403.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	t := s.tokens[strings.TrimSpace(bearer)]
	s.mu.Unlock()
	if !ok || t == nil || t.Kind != "access" || !s.now().Before(t.Expires) {
		googleError(w, http.StatusUnauthorized, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
			errorInfo("ACCESS_TOKEN_TYPE_UNSUPPORTED", nil))
		return "", false
	}
	for _, sc := range t.Scopes {
		if sc == CloudPlatformScope || sc == iamScope {
			return t.ServiceAccount, true
		}
	}
	googleError(w, http.StatusForbidden, "Request had insufficient authentication scopes.", errorInfo("ACCESS_TOKEN_SCOPE_INSUFFICIENT", nil))
	return "", false
}

// authorize checks that caller may create tokens along chain (delegates
// then the target): each principal must be a token creator on the next
// account. It returns the target, or an HTTP status and Google's message.
func (s *Server) authorize(caller string, chain []string, permission string) (account, int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	principal := caller
	var a *account
	for _, name := range chain {
		email := name
		if id, ok := s.byID[name]; ok {
			email = id
		}
		a = s.accounts[email]
		if a == nil {
			return account{}, http.StatusNotFound, "Not found; Gaia id not found for email " + name
		}
		if !a.creators[principal] {
			return account{}, http.StatusForbidden, fmt.Sprintf("Permission '%s' denied on resource (or it may not exist).", permission)
		}
		principal = a.email
	}
	return *a, 0, ""
}

// handleTokenInfo answers what Google's tokeninfo endpoint answers about
// a valid token, or 400 invalid_token.
func (s *Server) handleTokenInfo(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": err.Error()})
		return
	}
	value, kind := r.Form.Get("access_token"), "access"
	if value == "" {
		value, kind = r.Form.Get("id_token"), "id"
	}
	now := s.now()
	s.mu.Lock()
	t := s.tokens[value]
	var a *account
	if t != nil {
		a = s.accounts[t.ServiceAccount]
	}
	s.mu.Unlock()
	if t == nil || t.Kind != kind || !now.Before(t.Expires) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_token", "error_description": "Invalid Value"})
		return
	}
	info := map[string]string{
		"azp": a.uniqueID, "sub": a.uniqueID, "exp": strconv.FormatInt(t.Expires.Unix(), 10),
		"expires_in": strconv.FormatInt(int64(t.Expires.Sub(now)/time.Second), 10), "email": a.email, "email_verified": "true",
	}
	if t.Kind == "id" {
		info["aud"], info["iss"], info["iat"] = t.Audience, IDTokenIssuer, strconv.FormatInt(t.IssuedAt.Unix(), 10)
	} else {
		info["aud"], info["scope"], info["access_type"] = a.uniqueID, strings.Join(t.Scopes, " "), "online"
	}
	writeJSON(w, http.StatusOK, info)
}

// handleCerts serves the ID tokens' public key as a JWKS.
func (s *Server) handleCerts(w http.ResponseWriter) {
	pub := s.idKey.PublicKey
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "alg": "RS256", "use": "sig", "kid": s.idKeyID,
		"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}

// IDTokenClaims verifies an ID token the server issued (signature, iss,
// exp by the server's clock) and returns its claims.
func (s *Server) IDTokenClaims(token string) (map[string]any, error) {
	now := s.now()
	t, err := jwt.Parse([]byte(token), jwt.WithKey(jwa.RS256, &s.idKey.PublicKey), jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })), jwt.WithIssuer(IDTokenIssuer))
	if err != nil {
		return nil, err
	}
	return t.AsMap(context.Background())
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randomDigits(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		d, _ := rand.Int(rand.Reader, big.NewInt(10))
		if i == 0 && d.Int64() == 0 {
			d = big.NewInt(1)
		}
		b.WriteString(d.String())
	}
	return b.String()
}

const tokenChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = tokenChars[int(b[i])%len(tokenChars)]
	}
	return string(b)
}

// ErrInvalidToken is TokenInfo's error for a token that is not valid
// (never issued, or expired).
var ErrInvalidToken = errors.New("invalid_token")

// TokenInfo is what /tokeninfo at base (the server's URL) says about a
// token, asked over HTTP as a client of Google's endpoint asks (a JWT, an
// ID token, as id_token, anything else as access_token). It returns
// an error wrapping ErrInvalidToken for a token that is not valid now.
func TokenInfo(base, token string) (map[string]string, error) {
	param := "access_token"
	if strings.HasPrefix(token, "eyJ") { // a JWT: {" in base64url
		param = "id_token"
	}
	resp, err := http.PostForm(base+"/tokeninfo", url.Values{param: {token}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s", ErrInvalidToken, out["error_description"])
	}
	return out, nil
}
