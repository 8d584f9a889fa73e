package aws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/valet-broker/valet/backends"
)

// Revocation. STS has no call that ends a session, so valet denies a
// revoked session everything through the role's own permissions: an
// inline policy of the role (Options.RevocationPolicy), written by valet
// alone, holds Deny statements conditioned on aws:SourceIdentity, the
// session's lease id. An explicit deny wins over any allow, and a session's
// SourceIdentity cannot be changed, also not in sessions chained from it.
//
// The lease ids are packed into one statement per 15-minute window in
// which their sessions end (Sid ValetDenyUntil<unix time>), so a statement
// is dropped whole once every session it names has ended. IAM limits a
// role's inline policies to 10,240 characters in all (whitespace not
// counted); when the next id does not fit, valet falls back to the
// documented "revoke older sessions" statement, a deny for every session of
// the role issued before now (aws:TokenIssueTime), which replaces the ids
// and, being one statement, always fits. That also ends the sessions of the
// role's other live leases; the revocation's audit record says so.
//
// valet keeps the document it last wrote in its data directory and writes
// it there before each PutRolePolicy, so a read of IAM (eventually
// consistent: it may return an older document for seconds) never makes it
// drop an id it had written. IAM applies a new document within seconds.

const (
	// maxInlinePolicyChars is IAM's limit on the inline policies of one
	// role, whitespace not counted.
	maxInlinePolicyChars = 10240
	// bucketWidth is the window of session ends one statement covers.
	bucketWidth = 15 * time.Minute
	// clockMargin covers clock differences between valet and AWS when
	// deciding that a session has ended.
	clockMargin = time.Minute

	sidUntil      = "ValetDenyUntil"
	sidOlderUntil = "ValetDenyOlderUntil"
)

// Revoke denies the session of ref's lease (see RevokeNoted).
func (b *Backend) Revoke(ctx context.Context, ref backends.Ref) error {
	_, err := b.RevokeNoted(ctx, ref)
	return err
}

// RevokeNoted denies the session of ref's lease, by its SourceIdentity (the
// lease id), in the IAM role's revocation policy; it also serves a lease
// whose mint was interrupted (no handle), whose session, if STS created
// one, carries the same SourceIdentity. It returns nil at once for a
// session that has ended by ref.ValidUntil and for a mint STS refused. The
// note says when the role's policy budget forced valet to deny every older
// session of the role instead. Errors wrap backends.ErrUnavailable when AWS
// cannot be reached.
func (b *Backend) RevokeNoted(ctx context.Context, ref backends.Ref) (string, error) {
	if ref.Handle == "" {
		if _, ok := b.notIssued.LoadAndDelete(ref.CorrelationID); ok {
			return "", nil // STS answered the mint with an error
		}
	}
	until := ref.ValidUntil
	if until.IsZero() {
		until = ref.ExpiresAt
	}
	if t, err := time.Parse(time.RFC3339, ref.Details[detailSessionExpiresAt]); err == nil && t.After(until) {
		until = t
	}
	now := b.clock.Now()
	if now.After(until.Add(clockMargin)) {
		return "", nil // the session has expired at STS
	}
	roleARN := ref.Details[detailRoleARN]
	if roleARN == "" {
		ro, err := b.role(ref.Role)
		if err != nil {
			return "", fmt.Errorf("revoke the session of lease %s: %w", ref.CorrelationID, err)
		}
		roleARN = ro.RoleARN
	}
	ro, err := parseRole(backends.RoleSpec{Params: map[string]any{"role_arn": roleARN}})
	if err != nil {
		return "", fmt.Errorf("revoke the session of lease %s: %w", ref.CorrelationID, err)
	}
	acct, err := b.account.get(ctx, b)
	if err != nil {
		return "", err
	}
	if acct != ro.arn.AccountID {
		return "", fmt.Errorf("cannot revoke sessions of %s: valet's AWS credentials are of account %s", roleARN, acct)
	}
	maxSession := MaxSessionDuration
	if r, err := b.role(ref.Role); err == nil && r.roleName == ro.roleName {
		maxSession = r.maxSession
	}
	return b.writer(ro.roleName).deny(ctx, denial{id: ref.CorrelationID, until: until, maxSession: maxSession})
}

// denial is one session to deny.
type denial struct {
	id         string
	until      time.Time     // the session has ended by then
	maxSession time.Duration // the longest session the role issues

	done chan struct{}
	note string
	err  error
}

// roleWriter serializes the writes of one IAM role's revocation policy and
// gathers the denials that arrive while one is in flight into the next
// (group commit): many revocations cost one PutRolePolicy.
type roleWriter struct {
	b    *Backend
	role string

	mu      sync.Mutex
	pending []*denial
	busy    bool
	doc     *denyDoc // nil until loaded
	synced  bool     // doc is what IAM was last told
}

func (b *Backend) writer(roleName string) *roleWriter {
	b.writersMu.Lock()
	defer b.writersMu.Unlock()
	w := b.writers[roleName]
	if w == nil {
		w = &roleWriter{b: b, role: roleName}
		b.writers[roleName] = w
	}
	return w
}

// deny adds d to the role's policy and waits until IAM accepted it.
func (w *roleWriter) deny(ctx context.Context, d denial) (string, error) {
	d.done = make(chan struct{})
	w.mu.Lock()
	if w.synced && w.doc.denies(d.id) {
		w.mu.Unlock()
		return "", nil // already written, by an earlier attempt
	}
	w.pending = append(w.pending, &d)
	if !w.busy {
		w.busy = true
		go w.run()
	}
	w.mu.Unlock()
	select {
	case <-d.done:
		return d.note, d.err
	case <-ctx.Done():
		return "", fmt.Errorf("revoke the session of lease %s: %w: %w", d.id, backends.ErrUnavailable, ctx.Err())
	}
}

// run writes batches until none is pending.
func (w *roleWriter) run() {
	for {
		w.mu.Lock()
		batch := w.pending
		w.pending = nil
		if len(batch) == 0 {
			w.busy = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 3*w.b.opts.Timeout.D())
		note, err := w.write(ctx, batch)
		cancel()
		for _, d := range batch {
			d.note, d.err = note, err
			close(d.done)
		}
	}
}

// write adds batch to the policy, prunes what has ended, falls back to
// denying older sessions when the budget is exhausted, and puts the policy.
func (w *roleWriter) write(ctx context.Context, batch []*denial) (string, error) {
	b := w.b
	w.mu.Lock()
	doc := w.doc
	w.mu.Unlock()
	if doc == nil {
		var err error
		if doc, err = w.load(ctx); err != nil {
			return "", err
		}
	}
	doc = doc.clone()
	now := b.clock.Now()
	doc.prune(now)
	maxSession := time.Duration(0)
	for _, d := range batch {
		doc.add(d.id, d.until)
		maxSession = max(maxSession, d.maxSession)
	}
	note := ""
	fallback := func() {
		doc.denyOlder(now, maxSession)
		note = fmt.Sprintf("IAM role %s's inline policy budget (%d characters) is exhausted: every session of the role issued before %s is now denied (aws:TokenIssueTime), the sessions of the role's other live leases included",
			w.role, maxInlinePolicyChars, now.UTC().Format(time.RFC3339))
	}
	if policySize(doc.render()) > maxInlinePolicyChars {
		fallback()
	}
	err := w.put(ctx, doc)
	if apiErrorCode(err) == "LimitExceeded" && note == "" {
		// The role's other inline policies leave less room than ours
		// needs.
		fallback()
		err = w.put(ctx, doc)
	}
	if err != nil && apiErrorCode(err) != "" {
		err = b.awsError(err, "put the revocation policy of IAM role "+w.role)
	}
	w.mu.Lock()
	w.doc, w.synced = doc, err == nil
	w.mu.Unlock()
	if err != nil {
		return "", err
	}
	if note != "" {
		b.log.Warn("revoked every older session of an IAM role: its revocation policy is full", "iam_role", w.role, "issued_before", now.UTC().Format(time.RFC3339))
	}
	return note, nil
}

// put keeps doc on disk, then writes it to IAM. IAM's errors are returned
// as the SDK reports them.
func (w *roleWriter) put(ctx context.Context, doc *denyDoc) error {
	b := w.b
	text := doc.render()
	if err := w.save(text); err != nil {
		return fmt.Errorf("keep the revocation policy of IAM role %s: %w", w.role, err)
	}
	if len(doc.statements) == 0 && len(doc.foreign) == 0 {
		_, err := b.iam.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: awssdk.String(w.role), PolicyName: awssdk.String(b.opts.RevocationPolicy)})
		if apiErrorCode(err) == "NoSuchEntity" {
			return nil
		}
		return sdkError(b, err, "delete the revocation policy of IAM role "+w.role)
	}
	_, err := b.iam.PutRolePolicy(ctx, &iam.PutRolePolicyInput{
		RoleName: awssdk.String(w.role), PolicyName: awssdk.String(b.opts.RevocationPolicy), PolicyDocument: awssdk.String(text),
	})
	return sdkError(b, err, "put the revocation policy of IAM role "+w.role)
}

// sdkError keeps an error AWS answered with as it is (write classifies
// it), and classifies a request that got no answer.
func sdkError(b *Backend, err error, what string) error {
	if err == nil || apiErrorCode(err) != "" {
		return err
	}
	return b.awsError(err, what)
}

// statePath is where the role's policy is kept.
func (w *roleWriter) statePath() string {
	if w.b.dir == "" {
		return ""
	}
	return filepath.Join(w.b.dir, w.role+".json")
}

// load reads the policy valet last wrote, from its data directory, or from
// IAM when there is none (a new data directory).
func (w *roleWriter) load(ctx context.Context) (*denyDoc, error) {
	if p := w.statePath(); p != "" {
		text, err := os.ReadFile(p)
		if err == nil {
			doc, err := parseDenyDoc(string(text))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			return doc, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	b := w.b
	out, err := b.iam.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: awssdk.String(w.role), PolicyName: awssdk.String(b.opts.RevocationPolicy)})
	if err != nil {
		if apiErrorCode(err) == "NoSuchEntity" {
			return &denyDoc{}, nil
		}
		return nil, b.awsError(err, "read the revocation policy of role "+w.role)
	}
	text := awssdk.ToString(out.PolicyDocument)
	// IAM returns policy documents URL-encoded (RFC 3986).
	if dec, err := url.QueryUnescape(text); err == nil && !strings.HasPrefix(strings.TrimSpace(text), "{") {
		text = dec
	}
	doc, err := parseDenyDoc(text)
	if err != nil {
		return nil, fmt.Errorf("the revocation policy %s of IAM role %s: %w", b.opts.RevocationPolicy, w.role, err)
	}
	return doc, nil
}

// save writes text to the state file durably (write, fsync, rename).
func (w *roleWriter) save(text string) error {
	p := w.statePath()
	if p == "" {
		return nil
	}
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// denyDoc is the revocation policy: valet's statements plus, kept as they
// are, any statement someone else put there.
type denyDoc struct {
	statements []*denyStatement
	foreign    []json.RawMessage
}

// denyStatement is one of valet's statements: a set of source identities
// whose sessions end by until, or (older set) every session issued before
// issuedBefore, kept until until.
type denyStatement struct {
	until        time.Time
	ids          map[string]bool
	older        bool
	issuedBefore time.Time
}

// policyStatement is the JSON shape of a statement.
type policyStatement struct {
	Sid       string                    `json:"Sid"`
	Effect    string                    `json:"Effect"`
	Action    any                       `json:"Action"`
	Resource  any                       `json:"Resource"`
	Condition map[string]map[string]any `json:"Condition,omitempty"`
}

func parseDenyDoc(text string) (*denyDoc, error) {
	var raw struct {
		Statement json.RawMessage `json:"Statement"`
	}
	if err := json.Unmarshal([]byte(text), &raw); err != nil {
		return nil, fmt.Errorf("not a policy document: %w", err)
	}
	var list []json.RawMessage
	if len(raw.Statement) > 0 && raw.Statement[0] == '{' {
		list = []json.RawMessage{raw.Statement}
	} else if len(raw.Statement) > 0 {
		if err := json.Unmarshal(raw.Statement, &list); err != nil {
			return nil, fmt.Errorf("statement: %w", err)
		}
	}
	doc := &denyDoc{}
	for _, r := range list {
		var s policyStatement
		if err := json.Unmarshal(r, &s); err != nil {
			return nil, fmt.Errorf("statement: %w", err)
		}
		st, ok := parseOwnStatement(s)
		if !ok {
			doc.foreign = append(doc.foreign, r)
			continue
		}
		doc.statements = append(doc.statements, st)
	}
	return doc, nil
}

// parseOwnStatement reads a statement valet wrote; ok is false for any
// other.
func parseOwnStatement(s policyStatement) (*denyStatement, bool) {
	if s.Effect != "Deny" || s.Action != "*" || s.Resource != "*" {
		return nil, false
	}
	switch {
	case strings.HasPrefix(s.Sid, sidOlderUntil):
		unix, err := strconv.ParseInt(strings.TrimPrefix(s.Sid, sidOlderUntil), 10, 64)
		v, _ := s.Condition["DateLessThan"]["aws:TokenIssueTime"].(string)
		t, terr := time.Parse(time.RFC3339, v)
		if err != nil || terr != nil {
			return nil, false
		}
		return &denyStatement{until: time.Unix(unix, 0).UTC(), older: true, issuedBefore: t}, true
	case strings.HasPrefix(s.Sid, sidUntil):
		unix, err := strconv.ParseInt(strings.TrimPrefix(s.Sid, sidUntil), 10, 64)
		if err != nil {
			return nil, false
		}
		st := &denyStatement{until: time.Unix(unix, 0).UTC(), ids: map[string]bool{}}
		switch v := s.Condition["StringEquals"]["aws:SourceIdentity"].(type) {
		case string:
			st.ids[v] = true
		case []any:
			for _, x := range v {
				if id, ok := x.(string); ok {
					st.ids[id] = true
				}
			}
		default:
			return nil, false
		}
		return st, true
	}
	return nil, false
}

func (d *denyDoc) clone() *denyDoc {
	out := &denyDoc{foreign: d.foreign}
	for _, s := range d.statements {
		c := *s
		if s.ids != nil {
			c.ids = make(map[string]bool, len(s.ids))
			for id := range s.ids {
				c.ids[id] = true
			}
		}
		out.statements = append(out.statements, &c)
	}
	return out
}

// denies reports whether the document denies the session of lease id.
func (d *denyDoc) denies(id string) bool {
	for _, s := range d.statements {
		if s.ids[id] {
			return true
		}
	}
	return false
}

// prune drops the statements whose sessions have all ended.
func (d *denyDoc) prune(now time.Time) {
	keep := d.statements[:0]
	for _, s := range d.statements {
		if s.until.After(now) {
			keep = append(keep, s)
		}
	}
	d.statements = keep
}

// add denies id, whose session has ended by until, in the statement of
// until's window.
func (d *denyDoc) add(id string, until time.Time) {
	end := until.Add(clockMargin).Truncate(bucketWidth).Add(bucketWidth).UTC()
	for _, s := range d.statements {
		if !s.older && s.until.Equal(end) {
			s.ids[id] = true
			return
		}
	}
	d.statements = append(d.statements, &denyStatement{until: end, ids: map[string]bool{id: true}})
}

// denyOlder replaces every id statement by one statement denying each
// session issued before now, kept until every such session has ended.
func (d *denyDoc) denyOlder(now time.Time, maxSession time.Duration) {
	issued := now.UTC().Truncate(time.Second).Add(time.Second)
	until := issued.Add(maxSession + clockMargin).Truncate(time.Second)
	d.statements = d.statements[:0]
	d.statements = append(d.statements, &denyStatement{older: true, issuedBefore: issued, until: until})
}

// render writes the policy compactly, statements in a stable order.
func (d *denyDoc) render() string {
	sts := append([]*denyStatement{}, d.statements...)
	sort.Slice(sts, func(i, j int) bool {
		if sts[i].older != sts[j].older {
			return sts[i].older
		}
		return sts[i].until.Before(sts[j].until)
	})
	var list []any
	for _, s := range sts {
		p := policyStatement{Effect: "Deny", Action: "*", Resource: "*"}
		if s.older {
			p.Sid = sidOlderUntil + strconv.FormatInt(s.until.Unix(), 10)
			p.Condition = map[string]map[string]any{"DateLessThan": {"aws:TokenIssueTime": s.issuedBefore.UTC().Format(time.RFC3339)}}
		} else {
			ids := make([]string, 0, len(s.ids))
			for id := range s.ids {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			p.Sid = sidUntil + strconv.FormatInt(s.until.Unix(), 10)
			p.Condition = map[string]map[string]any{"StringEquals": {"aws:SourceIdentity": ids}}
		}
		list = append(list, p)
	}
	for _, f := range d.foreign {
		list = append(list, f)
	}
	if list == nil {
		list = []any{}
	}
	out, _ := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": list})
	return string(out)
}

// policySize is a policy's size as IAM counts it: whitespace does not
// count.
func policySize(text string) int {
	n := 0
	for _, r := range text {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}
