package web

import (
	"net/http"
	"net/url"
	"strconv"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/broker/jobs"
)

// jobsData is the jobs page.
type jobsData struct {
	Jobs []jobs.Status
}

func (c *Console) handleJobs(w http.ResponseWriter, r *http.Request, se *session) {
	var d jobsData
	if c.jobs != nil {
		list, err := c.jobs.List(r.Context())
		if err != nil {
			c.brokerError(w, r, se, api.JobError(err, ""))
			return
		}
		d.Jobs = list
	}
	p := &page{Title: "Jobs", Data: d}
	c.fillLayout(r, p, se, "jobs")
	p.Flashes = append(p.Flashes, readFilters(r).flashes()...)
	c.render(w, r, http.StatusOK, "jobs.html", p)
}

// handleJobRun runs a job now as the session's operator. Like a grant
// decision it needs a fresh sign-in; without one the operator is sent to
// sign in again, and told why.
func (c *Console) handleJobRun(w http.ResponseWriter, r *http.Request, se *session) {
	name := r.PathValue("name")
	const back = "/ui/jobs"
	if !se.fresh(c.clock.Now(), c.cc.FreshLogin.D()) {
		q := url.Values{"reason": {"fresh"}, "next": {back}}
		http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
		return
	}
	if c.jobs == nil || !broker.ValidName(name) {
		c.flashError(se, "Run job", api.JobError(jobs.ErrNotFound, name))
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	run, err := c.jobs.RunNow(r.Context(), name, se.op.Name, consoleRunWait)
	switch {
	case run != nil && run.Ended.IsZero():
		c.sessions.addFlash(se.key, flash{"ok", "Job " + name + " run " + strconv.FormatUint(run.ID, 10) + " is running; this page shows its outcome when it ends."})
	case err != nil:
		c.flashError(se, "Run job "+name, api.JobError(err, name))
	case run.Outcome == jobs.OutcomeOK:
		c.log.Info("console job run", "job", name, "run", run.ID, "operator", se.op.Name)
		c.sessions.addFlash(se.key, flash{"ok", "Job " + name + " run " + strconv.FormatUint(run.ID, 10) + " succeeded."})
	default:
		c.sessions.addFlash(se.key, flash{"error", "Job " + name + " run " + strconv.FormatUint(run.ID, 10) + " ended " + run.Outcome + ": " + run.Error})
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}
