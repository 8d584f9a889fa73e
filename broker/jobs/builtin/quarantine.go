package builtin

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
)

// quarantineRelease records the end of the quarantines whose release time
// (signals.auto_release) has passed: Broker.ReleaseDue releases each with
// its agent.release audit record and announces it (agent.released). The
// gate stops refusing at the release time whether or not this has run.
func quarantineRelease() Definition {
	return Definition{
		Description: "Records the release of agents whose quarantine reached its release time (signals.auto_release) and announces them",
		Schedule:    "@every 30s", Timeout: 30 * time.Second, Default: true,
		Build: func(_ any, deps Deps) (jobs.Job, error) {
			if deps.Broker == nil {
				return nil, errors.New("needs the broker")
			}
			return jobs.JobFunc(func(ctx context.Context, now time.Time) (jobs.Result, error) {
				n, err := deps.Broker.ReleaseDue(ctx)
				return jobs.Result{Changes: map[string]string{"agents_released": strconv.Itoa(n)}}, err
			}), nil
		},
	}
}
