package web

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// The activity summary reads the newest audit records back to 24 hours
// ago, but never more than activityMaxRecords of them, so a busy log
// cannot make a page slow.
const (
	activityWindow     = 24 * time.Hour
	activityMaxRecords = 50000
	activityPage       = 1000
	lastDenialsShown   = 3
)

// activity is what the audit log says about the last 24 hours: mints,
// denials and revocations per hour, and per agent.
type activity struct {
	From  time.Time // start of the first hour
	To    time.Time // now
	Hours []hourCount
	Total hourCount
	// Scanned is how many records were read; Truncated is set when the
	// bound was reached before the window's start.
	Scanned   int
	Truncated bool
	Oldest    time.Time // time of the oldest record read
	Agents    map[string]*agentActivity
}

// hourCount counts one hour (or a total).
type hourCount struct {
	Start                       time.Time
	Mints, Denials, Revocations int
}

// agentActivity is one agent's share of the window.
type agentActivity struct {
	Mints, Denials int
	LastDenials    []audit.Record // newest first, at most lastDenialsShown
}

// window describes the span the counts cover.
func (a *activity) window() string {
	if a.Truncated {
		return fmt.Sprintf("the latest %d audit records (since %s)", a.Scanned, a.Oldest.UTC().Format("15:04 UTC"))
	}
	return "the last 24 hours"
}

// isRevocation says whether a record ends a lease early: an operator's
// revocation, an agent's release, or the backend's confirmation.
func isRevocation(kind string) bool {
	return kind == audit.KindRevoke || kind == audit.KindRelease || kind == audit.KindRevoked
}

// scanActivity reads the audit log backwards from its newest record.
// Mints are mint records allowed; denials are mint records denied;
// revocations are lease.revoke, lease.release and lease.revoked records,
// counted once per lease (an operator's revocation and the backend's
// confirmation are one revocation, at the time of the first record).
func scanActivity(ctx context.Context, log audit.Reader, now time.Time) (*activity, error) {
	a := &activity{To: now, Agents: map[string]*agentActivity{}}
	a.From = now.Truncate(time.Hour).Add(-activityWindow + time.Hour)
	a.Hours = make([]hourCount, 24)
	for i := range a.Hours {
		a.Hours[i].Start = a.From.Add(time.Duration(i) * time.Hour)
	}
	revoked := map[string]int{} // lease id -> hour of its earliest revocation record
	agent := func(id string) *agentActivity {
		aa := a.Agents[id]
		if aa == nil {
			aa = &agentActivity{}
			a.Agents[id] = aa
		}
		return aa
	}
	var before uint64
	done := false
	for !done && a.Scanned < activityMaxRecords {
		recs, err := log.ListAudit(ctx, audit.Filter{Newest: true, BeforeSeq: before, Limit: min(activityPage, activityMaxRecords-a.Scanned)})
		if err != nil {
			return nil, err
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			a.Scanned++
			a.Oldest = r.Time
			before = r.Seq
			if r.Time.Before(a.From) {
				done = true
				break
			}
			h := int(r.Time.Sub(a.From) / time.Hour)
			if h >= len(a.Hours) {
				continue // from a clock ahead of ours
			}
			agentID := r.AgentID
			if agentID == "" && r.Actor.Type == audit.ActorAgent {
				agentID = r.Actor.ID
			}
			switch {
			case r.Kind == audit.KindMint && r.Decision == audit.Allow:
				a.Hours[h].Mints++
				if agentID != "" {
					agent(agentID).Mints++
				}
			case r.Kind == audit.KindMint && r.Decision == audit.Deny:
				a.Hours[h].Denials++
			case isRevocation(r.Kind):
				if r.LeaseID == "" {
					a.Hours[h].Revocations++
				} else {
					revoked[r.LeaseID] = h // older records overwrite newer ones
				}
			}
			// Any refusal of an agent counts in its history: mint, renew,
			// redeem and break-glass denials.
			if r.Decision == audit.Deny && r.Actor.Type == audit.ActorAgent && agentID != "" {
				aa := agent(agentID)
				aa.Denials++
				if len(aa.LastDenials) < lastDenialsShown {
					aa.LastDenials = append(aa.LastDenials, r)
				}
			}
		}
		if len(recs) < activityPage {
			break
		}
	}
	a.Truncated = !done && a.Scanned >= activityMaxRecords
	for _, h := range revoked {
		a.Hours[h].Revocations++
	}
	for _, h := range a.Hours {
		a.Total.Mints += h.Mints
		a.Total.Denials += h.Denials
		a.Total.Revocations += h.Revocations
	}
	return a, nil
}

// activityCache keeps the last scan for a short while: several pages use
// it, and it does not change much in a few seconds.
type activityCache struct {
	mu   sync.Mutex
	at   time.Time
	last *activity
}

// activityMaxAge is how long a scan is reused.
const activityMaxAge = 5 * time.Second

// recentActivity returns the activity of the last 24 hours, reusing a
// scan younger than activityMaxAge.
func (c *Console) recentActivity(ctx context.Context) (*activity, error) {
	c.activity.mu.Lock()
	defer c.activity.mu.Unlock()
	now := c.clock.Now()
	if c.activity.last != nil && now.Sub(c.activity.at) < activityMaxAge && !now.Before(c.activity.at) {
		return c.activity.last, nil
	}
	a, err := scanActivity(ctx, c.audit, now)
	if err != nil {
		return nil, err
	}
	c.activity.at, c.activity.last = now, a
	return a, nil
}

// chart is the activity drawn as an SVG bar chart, laid out here so the
// template only places shapes.
type chart struct {
	Width, Height   int
	PlotTop, PlotH  int
	PlotLeft, PlotW int
	Bars            []bar
	Ticks           []tick
	Labels          []axisLabel
	Hours           []hourCount
	Max             int
	Title           string
}

type bar struct {
	X, Y, W, H int
	Class      string
	Label      string
}

type tick struct {
	Y     int
	Label string
}

type axisLabel struct {
	X     int
	Label string
}

// newChart lays out three bars per hour: mints, denials, revocations.
func newChart(a *activity) *chart {
	ch := &chart{Width: 760, Height: 220, PlotTop: 12, PlotH: 170, PlotLeft: 40, Hours: a.Hours}
	ch.PlotW = ch.Width - ch.PlotLeft - 8
	ch.Title = fmt.Sprintf("Mints, denials and revocations per hour, %s to %s", a.From.UTC().Format("Jan 2 15:04"), a.To.UTC().Format("15:04 UTC"))
	for _, h := range a.Hours {
		ch.Max = max(ch.Max, h.Mints, h.Denials, h.Revocations)
	}
	top := niceCeil(max(ch.Max, 1))
	slot := ch.PlotW / max(len(a.Hours), 1)
	bw := max((slot-4)/3, 1)
	base := ch.PlotTop + ch.PlotH
	scale := func(n int) int { return n * ch.PlotH / top }
	for i, h := range a.Hours {
		x := ch.PlotLeft + i*slot + 2
		span := h.Start.UTC().Format("15:04") + "–" + h.Start.Add(time.Hour).UTC().Format("15:04") + " UTC"
		for j, s := range []struct {
			n     int
			class string
			what  string
		}{{h.Mints, "mint", "mints"}, {h.Denials, "deny", "denials"}, {h.Revocations, "revoke", "revocations"}} {
			hh := scale(s.n)
			if s.n > 0 && hh < 2 {
				hh = 2
			}
			ch.Bars = append(ch.Bars, bar{X: x + j*bw, Y: base - hh, W: bw, H: hh, Class: s.class, Label: fmt.Sprintf("%s: %d %s", span, s.n, s.what)})
		}
		if i%3 == 0 {
			ch.Labels = append(ch.Labels, axisLabel{X: x, Label: h.Start.UTC().Format("15h")})
		}
	}
	for _, v := range []int{0, top / 2, top} {
		ch.Ticks = append(ch.Ticks, tick{Y: base - scale(v), Label: fmt.Sprint(v)})
	}
	return ch
}

// niceCeil rounds n up to 2, 4, 6 or 10 times a power of ten, so the
// middle tick is a whole number.
func niceCeil(n int) int {
	p := 1
	for {
		for _, m := range []int{2, 4, 6, 10} {
			if m*p >= n {
				return m * p
			}
		}
		p *= 10
	}
}
