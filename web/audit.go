package web

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// auditPageSize is how many records a page of the audit browser shows.
const auditPageSize = 50

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
	q := readFilters(r)
	d := auditData{Kinds: audit.Kinds, Kind: q.oneOf("kind", "kind", audit.Kinds), Agent: q.agent("agent")}
	res, at, err := c.verifyChain(r.Context())
	if err != nil {
		c.log.Error("console: verify audit log", "err", err)
		d.VerifyErr = "The audit log could not be read to verify it."
	}
	d.Verify, d.VerifiedAt = res, at
	f := audit.Filter{Newest: true, Kind: d.Kind, AgentID: d.Agent, Limit: auditPageSize}
	if v := q.value("before", "page"); v != "" {
		if b, err := strconv.ParseUint(v, 10, 64); err == nil && b > 0 {
			f.BeforeSeq = b
		} else {
			q.drop("page", "cursor %q is not a record number", v)
		}
	}
	d.Newest = f.BeforeSeq == 0
	recs, err := c.audit.ListAudit(r.Context(), f)
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
	p.Flashes = append(p.Flashes, q.flashes()...)
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
func (c *Console) verifyChain(ctx context.Context) (audit.VerifyResult, time.Time, error) {
	c.verify.mu.Lock()
	defer c.verify.mu.Unlock()
	now := c.clock.Now()
	if c.verify.ok && now.Sub(c.verify.at) < verifyMaxAge && !now.Before(c.verify.at) {
		return c.verify.res, c.verify.at, nil
	}
	res, err := c.audit.VerifyAudit(ctx)
	if err != nil {
		return res, now, err
	}
	c.verify.at, c.verify.res, c.verify.ok = now, res, true
	return res, now, nil
}
