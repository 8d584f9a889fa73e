package web

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker/audit"
)

// auditPageSize is how many records a page of the audit browser shows.
const auditPageSize = 50

// auditKinds are the record kinds the browser can filter by.
var auditKinds = []string{
	audit.KindMint, audit.KindMintFailed, audit.KindRenew, audit.KindRelease, audit.KindRevoke, audit.KindRevoked,
	audit.KindRevokeFailed, audit.KindIrrevocable, audit.KindExpire, audit.KindRecover,
	audit.KindGrantRequest, audit.KindGrantApprove, audit.KindGrantDeny, audit.KindGrantExpired, audit.KindGrantRedeem,
	audit.KindBreakGlass, audit.KindGrantReview,
	audit.KindPolicyReload, audit.KindConfigLoad, audit.KindServerStart, audit.KindIntrospection,
	audit.KindOperatorAuth, audit.KindAuthRefusedSummary,
}

// auditData is the audit page.
type auditData struct {
	Verify     audit.VerifyResult
	VerifiedAt time.Time
	VerifyErr  string
	Records    []audit.Record
	Kinds      []string
	Kind       string
	Agent      string
	Older      string // query of the next page
	Newest     bool   // showing the newest records
}

func (c *Console) handleAudit(w http.ResponseWriter, r *http.Request, se *session) {
	q := r.URL.Query()
	d := auditData{Kinds: auditKinds, Kind: q.Get("kind"), Agent: strings.TrimSpace(q.Get("agent"))}
	if !slices.Contains(auditKinds, d.Kind) {
		d.Kind = ""
	}
	res, at, err := c.verifyChain()
	if err != nil {
		c.log.Error("console: verify audit log", "err", err)
		d.VerifyErr = "The audit log could not be read to verify it."
	}
	d.Verify, d.VerifiedAt = res, at
	f := audit.Filter{Newest: true, Kind: d.Kind, AgentID: d.Agent, Limit: auditPageSize}
	if b, err := strconv.ParseUint(q.Get("before"), 10, 64); err == nil && b > 0 {
		f.BeforeSeq = b
	}
	d.Newest = f.BeforeSeq == 0
	recs, err := audit.List(c.auditDB, f)
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	d.Records = recs
	if len(recs) == auditPageSize && recs[len(recs)-1].Seq > 1 {
		oq := url.Values{"before": {strconv.FormatUint(recs[len(recs)-1].Seq, 10)}}
		if d.Kind != "" {
			oq.Set("kind", d.Kind)
		}
		if d.Agent != "" {
			oq.Set("agent", d.Agent)
		}
		d.Older = "/ui/audit?" + oq.Encode()
	}
	p := &page{Title: "Audit log", Data: d}
	c.fillLayout(r, p, se, "audit")
	c.render(w, r, http.StatusOK, "audit.html", p)
}

// verifyCache keeps the last verification of the chain briefly: Verify
// reads the whole log, and the page should not do that on every view.
type verifyCache struct {
	mu  sync.Mutex
	at  time.Time
	res audit.VerifyResult
	ok  bool
}

// verifyMaxAge is how long a verification is reused.
const verifyMaxAge = 30 * time.Second

// verifyChain verifies the audit chain, or returns a verification younger
// than verifyMaxAge, with the time it ran.
func (c *Console) verifyChain() (audit.VerifyResult, time.Time, error) {
	c.verify.mu.Lock()
	defer c.verify.mu.Unlock()
	now := c.clock.Now()
	if c.verify.ok && now.Sub(c.verify.at) < verifyMaxAge && !now.Before(c.verify.at) {
		return c.verify.res, c.verify.at, nil
	}
	res, err := audit.Verify(c.auditDB)
	if err != nil {
		return res, now, err
	}
	c.verify.at, c.verify.res, c.verify.ok = now, res, true
	return res, now, nil
}
