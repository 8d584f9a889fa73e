// Package awstest is a local stand-in for AWS STS and IAM, for tests and
// demos of valet's aws backend: no cloud is reachable from them. It speaks
// the AWS Query protocol (form-encoded POST, XML answers and errors in
// STS's and IAM's documented shapes), so the real aws-sdk-go-v2 clients
// talk to it, and it checks what AWS checks:
//
//   - every request is signed with Signature Version 4: the server signs
//     the received request again with aws-sdk-go-v2's own signer and the
//     caller's secret, and compares; it refuses a signature older or newer
//     than 15 minutes, a scope of another day or service, and a session
//     token that was not signed;
//   - AssumeRole parameters within STS's documented limits (names,
//     lengths, DurationSeconds 900 to 43,200 and the role's
//     MaxSessionDuration, the 2,048-character policy, a packed size, tag
//     counts and keys), with STS's error codes;
//   - inline role policies within IAM's limits (10,240 characters per
//     role, whitespace not counted), returned URL-encoded as IAM does;
//   - a request signed with session credentials is evaluated against the
//     role's inline policies, by a minimal evaluator: Deny statements whose
//     Action is * and whose conditions are StringEquals aws:SourceIdentity
//     or DateLessThan aws:TokenIssueTime. A denied request gets
//     AccessDenied, so "revoked" means the credentials stop working.
//     GetCallerIdentity is never denied, as at AWS.
//
// Policy changes take effect at once here; at AWS they take seconds
// (eventual consistency).
package awstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Query API versions, which tell the services apart on one endpoint.
const (
	stsVersion = "2011-06-15"
	iamVersion = "2010-05-08"
	stsXMLNS   = "https://sts.amazonaws.com/doc/2011-06-15/"
	iamXMLNS   = "https://iam.amazonaws.com/doc/2010-05-08/"
)

// MaxSkew is how far a request's signing time may be from the server's.
const MaxSkew = 15 * time.Minute

// Config configures a Server. Zero values take the defaults noted.
type Config struct {
	// AccountID is the account of the server's IAM user and roles
	// (default 123456789012).
	AccountID string
	// AccessKeyID and SecretAccessKey are the long-term keys of the IAM
	// user "valet" (default: random).
	AccessKeyID, SecretAccessKey string
	// Now is the server's clock for sessions (issue and expiry) (default
	// time.Now).
	Now func() time.Time
	// SignatureNow is the clock signatures are checked against (default
	// time.Now: clients sign with the wall clock).
	SignatureNow func() time.Time
}

// Server is a running STS and IAM test server.
type Server struct {
	// URL is the base URL of both services (http://127.0.0.1:PORT).
	URL       string
	AccountID string
	// AccessKeyID and SecretAccessKey are the keys valet signs with.
	AccessKeyID, SecretAccessKey string
	// UserARN is the ARN of the keys' IAM user.
	UserARN string

	now    func() time.Time
	sigNow func() time.Time
	signer *v4.Signer
	addr   string

	mu       sync.Mutex
	roles    map[string]*iamRole // by role name
	sessions map[string]*session // by access key id
	fail     map[string]failure  // action -> injected failure
	calls    map[string]int      // action -> requests that reached it
	handled  atomic.Int64        // requests answered
	busy     atomic.Int64        // nanoseconds spent answering
	listener net.Listener
	srv      *http.Server
}

// failure is an injected error answer.
type failure struct {
	status  int
	code    string
	message string
}

// New returns a server that is not yet listening; call Listen.
func New(c Config) *Server {
	if c.AccountID == "" {
		c.AccountID = "123456789012"
	}
	if c.AccessKeyID == "" {
		c.AccessKeyID = "AKIA" + randomString(16, upperAlnum)
	}
	if c.SecretAccessKey == "" {
		c.SecretAccessKey = randomString(40, secretChars)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.SignatureNow == nil {
		c.SignatureNow = time.Now
	}
	return &Server{
		AccountID: c.AccountID, AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey,
		UserARN: "arn:aws:iam::" + c.AccountID + ":user/valet",
		now:     c.Now, sigNow: c.SignatureNow, signer: v4.NewSigner(),
		roles: map[string]*iamRole{}, sessions: map[string]*session{}, fail: map[string]failure{}, calls: map[string]int{},
	}
}

// Listen starts serving on addr ("127.0.0.1:0" for a free port).
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.listener = ln
	s.addr = ln.Addr().String()
	s.URL = "http://" + s.addr
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
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

// Fail makes every later call of action (e.g. "PutRolePolicy") answer with
// an error of the given HTTP status and AWS code, until Fail(action, 0, "").
func (s *Server) Fail(action string, status int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		delete(s.fail, action)
		return
	}
	s.fail[action] = failure{status: status, code: code, message: "injected failure"}
}

// Calls returns how many authenticated requests for action arrived.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Handled returns how many requests the server answered and the time it
// spent answering them (its own response time, for benchmarks).
func (s *Server) Handled() (int64, time.Duration) {
	return s.handled.Load(), time.Duration(s.busy.Load())
}

// caller is who signed a request: the IAM user, or a session.
type caller struct {
	session *session // nil for the IAM user
}

// ServeHTTP answers one Query API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() {
		s.handled.Add(1)
		s.busy.Add(int64(time.Since(start)))
	}()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, stsXMLNS, &apiError{400, "Sender", "MalformedQueryString", "unreadable body"})
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || r.Method != http.MethodPost {
		writeError(w, stsXMLNS, &apiError{400, "Sender", "MalformedQueryString", "expected a form-encoded POST"})
		return
	}
	version, action := form.Get("Version"), form.Get("Action")
	service, ns := "", ""
	switch version {
	case stsVersion:
		service, ns = "sts", stsXMLNS
	case iamVersion:
		service, ns = "iam", iamXMLNS
	default:
		writeError(w, stsXMLNS, &apiError{400, "Sender", "InvalidAction", fmt.Sprintf("Could not find operation %s for version %s", action, version)})
		return
	}
	c, aerr := s.authenticate(r, body, service)
	if aerr != nil {
		writeError(w, ns, aerr)
		return
	}
	s.mu.Lock()
	f, failing := s.fail[action]
	s.calls[action]++
	s.mu.Unlock()
	if failing {
		writeError(w, ns, &apiError{f.status, "Receiver", f.code, f.message})
		return
	}
	if c.session != nil && !(service == "sts" && action == "GetCallerIdentity") {
		// AWS never denies GetCallerIdentity; everything else a session
		// does passes the role's policies.
		if aerr := s.evaluate(c.session, service+":"+action); aerr != nil {
			writeError(w, ns, aerr)
			return
		}
	}
	var result any
	switch service + ":" + action {
	case "sts:AssumeRole":
		result, aerr = s.assumeRole(c, form)
	case "sts:GetCallerIdentity":
		result, aerr = s.getCallerIdentity(c)
	case "iam:GetRole":
		result, aerr = s.getRole(form)
	case "iam:GetRolePolicy":
		result, aerr = s.getRolePolicy(form)
	case "iam:PutRolePolicy":
		result, aerr = s.putRolePolicy(c, form)
	case "iam:DeleteRolePolicy":
		result, aerr = s.deleteRolePolicy(c, form)
	case "iam:ListRolePolicies":
		result, aerr = s.listRolePolicies(form)
	default:
		aerr = &apiError{400, "Sender", "InvalidAction", fmt.Sprintf("Could not find operation %s for version %s", action, version)}
	}
	if aerr != nil {
		writeError(w, ns, aerr)
		return
	}
	writeResult(w, ns, action, result)
}

// apiError is an AWS error answer.
type apiError struct {
	status  int
	typ     string // Sender or Receiver
	code    string
	message string
}

func validationError(format string, args ...any) *apiError {
	return &apiError{400, "Sender", "ValidationError", fmt.Sprintf(format, args...)}
}

func accessDenied(format string, args ...any) *apiError {
	return &apiError{403, "Sender", "AccessDenied", fmt.Sprintf(format, args...)}
}

// writeError writes STS's and IAM's error shape:
// <ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>.
func writeError(w http.ResponseWriter, ns string, e *apiError) {
	type errorBody struct {
		Type    string `xml:"Type"`
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	out := struct {
		XMLName   xml.Name  `xml:"ErrorResponse"`
		NS        string    `xml:"xmlns,attr"`
		Error     errorBody `xml:"Error"`
		RequestID string    `xml:"RequestId"`
	}{NS: ns, Error: errorBody{e.typ, e.code, e.message}, RequestID: requestID()}
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", out.RequestID)
	w.WriteHeader(e.status)
	xml.NewEncoder(w).Encode(out)
}

// writeResult writes <ActionResponse><ActionResult>...</ActionResult>
// <ResponseMetadata><RequestId/></ResponseMetadata></ActionResponse>;
// result is the ActionResult element (nil for an empty one).
func writeResult(w http.ResponseWriter, ns, action string, result any) {
	var body bytes.Buffer
	if result != nil {
		if err := xml.NewEncoder(&body).Encode(result); err != nil {
			writeError(w, ns, &apiError{500, "Receiver", "InternalFailure", err.Error()})
			return
		}
	}
	rid := requestID()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", rid)
	fmt.Fprintf(w, `<%sResponse xmlns="%s">%s<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>`,
		action, ns, body.String(), rid, action)
}

// authenticate verifies the request's Signature Version 4 (header form)
// and returns who signed it.
func (s *Server) authenticate(r *http.Request, body []byte, service string) (caller, *apiError) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return caller{}, &apiError{403, "Sender", "MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return caller{}, &apiError{400, "Sender", "IncompleteSignature", "Unsupported signing algorithm; only AWS4-HMAC-SHA256 is accepted"}
	}
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(auth, algo), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[k] = v
		}
	}
	cred, signed, sig := fields["Credential"], fields["SignedHeaders"], fields["Signature"]
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || signed == "" || sig == "" {
		return caller{}, &apiError{400, "Sender", "IncompleteSignature", "Authorization header requires Credential=AKID/date/region/service/aws4_request, SignedHeaders and Signature"}
	}
	akid, day, region, svc := scope[0], scope[1], scope[2], scope[3]
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return caller{}, &apiError{400, "Sender", "IncompleteSignature", "X-Amz-Date is missing or not of the form 20060102T150405Z"}
	}
	now := s.sigNow()
	if d := now.Sub(t); d > MaxSkew || d < -MaxSkew {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", fmt.Sprintf("Signature expired: %s is now earlier than %s (%s - 15 min.)",
			amzDate, now.Add(-MaxSkew).UTC().Format("20060102T150405Z"), now.UTC().Format("20060102T150405Z"))}
	}
	if day != t.Format("20060102") {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", "Credential should be scoped to a valid date: " + t.Format("20060102")}
	}
	if svc != service {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", fmt.Sprintf("Credential should be scoped to correct service: '%s'.", service)}
	}
	if region == "" {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", "Credential should be scoped to a valid region."}
	}
	signedList := strings.Split(signed, ";")
	has := map[string]bool{}
	for _, h := range signedList {
		has[h] = true
	}
	if !has["host"] || !has["x-amz-date"] {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", "host and x-amz-date must be signed headers"}
	}
	token := r.Header.Get("X-Amz-Security-Token")
	if token != "" && !has["x-amz-security-token"] {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", "x-amz-security-token must be a signed header"}
	}

	secret, c, aerr := s.secretFor(akid, token, s.now())
	if aerr != nil {
		return caller{}, aerr
	}
	// Sign the request again, as received, with the secret we know.
	again, err := http.NewRequest(r.Method, r.URL.String(), bytes.NewReader(body))
	if err != nil {
		return caller{}, &apiError{400, "Sender", "MalformedQueryString", err.Error()}
	}
	again.Host = r.Host
	again.URL.Host = r.Host
	for _, h := range signedList {
		if h == "host" || h == "content-length" {
			continue
		}
		for _, v := range r.Header.Values(h) {
			again.Header.Add(h, v)
		}
	}
	again.ContentLength = int64(len(body))
	if !has["content-length"] && len(body) > 0 {
		// The signer signs a non-zero length; a client that did not
		// signed something else.
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch", "content-length must be a signed header"}
	}
	sum := sha256.Sum256(body)
	if err := s.signer.SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}, again,
		hex.EncodeToString(sum[:]), svc, region, t); err != nil {
		return caller{}, &apiError{500, "Receiver", "InternalFailure", err.Error()}
	}
	if subtle.ConstantTimeCompare([]byte(again.Header.Get("Authorization")), []byte(auth)) != 1 {
		return caller{}, &apiError{403, "Sender", "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."}
	}
	return c, nil
}

// secretFor returns the secret of akid: the IAM user's, or a session's
// whose token the request carries and that has not expired.
func (s *Server) secretFor(akid, token string, now time.Time) (string, caller, *apiError) {
	invalid := &apiError{403, "Sender", "InvalidClientTokenId", "The security token included in the request is invalid."}
	if akid == s.AccessKeyID {
		if token != "" {
			return "", caller{}, invalid
		}
		return s.SecretAccessKey, caller{}, nil
	}
	s.mu.Lock()
	sess := s.sessions[akid]
	s.mu.Unlock()
	if sess == nil || subtle.ConstantTimeCompare([]byte(token), []byte(sess.token)) != 1 {
		return "", caller{}, invalid
	}
	if !now.Before(sess.expires) {
		return "", caller{}, &apiError{400, "Sender", "ExpiredToken", "The security token included in the request is expired"}
	}
	return sess.secret, caller{session: sess}, nil
}

const (
	upperAlnum  = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	secretChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

// randomString returns n characters of alphabet.
func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func requestID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// errNotFound is returned by lookups of missing roles.
var errNotFound = errors.New("not found")
