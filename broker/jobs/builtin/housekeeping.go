package builtin

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
)

func grantExpiry() Definition {
	return Definition{
		Description: "Records grants past their deadlines as expired and announces them, and gives back grants whose mint a stopped replica left unfinished",
		Schedule:    "@every 30s", Timeout: 30 * time.Second, Default: true,
		Build: func(_ any, deps Deps) (jobs.Job, error) {
			if deps.Broker == nil {
				return nil, errors.New("needs the broker")
			}
			return jobs.JobFunc(func(ctx context.Context, now time.Time) (jobs.Result, error) {
				n, err := deps.Broker.ExpireGrants(ctx)
				r, rerr := deps.Broker.RecoverRedeemedGrants(ctx)
				return jobs.Result{Changes: map[string]string{"grants_expired": strconv.Itoa(n), "grants_recovered": strconv.Itoa(r)}}, errors.Join(err, rerr)
			}), nil
		},
	}
}

func housekeeping() Definition {
	return Definition{
		Description: "Deletes leases and grants ended longer than leases.retention ago, signals older than signals.retention and expired replay-cache entries, and measures the database file",
		Schedule:    "@every 10m", Timeout: 5 * time.Minute, Default: true,
		Build: func(_ any, deps Deps) (jobs.Job, error) {
			if deps.Broker == nil {
				return nil, errors.New("needs the broker")
			}
			return jobs.JobFunc(func(ctx context.Context, now time.Time) (jobs.Result, error) {
				h, err := deps.Broker.Housekeep(ctx)
				ch := map[string]string{"leases_pruned": strconv.Itoa(h.Pruned), "grants_pruned": strconv.Itoa(h.GrantsPruned),
					"replay_purged": strconv.Itoa(h.Purged), "signals_pruned": strconv.Itoa(h.SignalsPruned)}
				if deps.Storage != nil {
					size, free, serr := deps.Storage.StorageStats()
					if serr == nil {
						ch["db_size_bytes"], ch["db_free_pages"] = strconv.FormatInt(size, 10), strconv.Itoa(free)
					}
					err = errors.Join(err, serr)
				}
				return jobs.Result{Changes: ch}, err
			}), nil
		},
	}
}
