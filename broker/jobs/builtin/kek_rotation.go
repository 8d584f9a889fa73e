package builtin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker/failpoint"
	"github.com/valet-broker/valet/broker/jobs"
)

// Change keys of a kek-rotation run that `valet kek finish` reads.
const (
	// KEKChangeID is the current KEK's id (kek.ID), KEKChangePreviousID
	// the previous one's, or "none".
	KEKChangeID         = "kek_id"
	KEKChangePreviousID = "previous_kek_id"
	// KEKChangeRewrapped, KEKChangeCurrent and KEKChangeUnreadable are
	// the run's totals (kek.Report).
	KEKChangeRewrapped  = "rewrapped"
	KEKChangeCurrent    = "current"
	KEKChangeUnreadable = "unreadable"
)

func kekRotation() Definition {
	return Definition{
		Description: "Seals again under the current key-encryption key every key valet keeps that only the previous one opens (signing keys, app keys and tokens, the checkpoint key, the SSF transmitter key)",
		Schedule:    "@hourly", Timeout: 5 * time.Minute, Default: true,
		Build: func(_ any, deps Deps) (jobs.Job, error) {
			ring := deps.ring()
			if err := ring.Check(); err != nil {
				return nil, err
			}
			j := &kekRotationJob{ring: ring}
			names := make([]string, 0, len(deps.Backends))
			for name, be := range deps.Backends {
				if _, ok := be.(backends.KEKRewrapper); ok {
					names = append(names, name)
				}
			}
			slices.Sort(names)
			for _, name := range names {
				j.owners = append(j.owners, sealedOwner{name: "backend." + name, rewrap: deps.Backends[name].(backends.KEKRewrapper).RewrapKEK})
			}
			j.owners = append(j.owners, sealedOwner{name: "audit_checkpoint_key", rewrap: func(context.Context) (kek.Report, error) {
				return RewrapCheckpointKey(deps.DataDir, ring)
			}})
			for _, f := range deps.Sealed {
				j.owners = append(j.owners, sealedOwner{name: f.Name, rewrap: func(context.Context) (kek.Report, error) { return f.Rewrap(ring) }})
			}
			return j, nil
		},
	}
}

// sealedOwner is one keeper of values sealed under the KEK: a backend, the
// audit checkpoint key, or one of Deps.Sealed.
type sealedOwner struct {
	name   string
	rewrap func(context.Context) (kek.Report, error)
}

// kekRotationJob re-wraps every owner's sealed values under the current
// KEK.
type kekRotationJob struct {
	ring   kek.Ring
	owners []sealedOwner
}

// Run re-wraps each owner's values in turn (each file atomically, so a
// crash between two leaves each wholly under one KEK or the other, and a
// restart with both KEKs opens everything). Changes name the KEKs by id
// and count, per owner and in total, the values re-wrapped, already
// current and unreadable under both. A run without a previous KEK finds
// nothing to re-wrap and checks that the current KEK opens every value.
func (j *kekRotationJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	ch := map[string]string{KEKChangeID: kek.ID(j.ring.Current), KEKChangePreviousID: "none"}
	if j.ring.Previous != nil {
		ch[KEKChangePreviousID] = kek.ID(j.ring.Previous)
	}
	var total kek.Report
	var errs []error
	for i, o := range j.owners {
		if err := ctx.Err(); err != nil {
			return jobs.Result{Changes: ch}, err
		}
		if i > 0 {
			failpoint.Hit(failpoint.KEKBetweenOwners)
		}
		rep, err := o.rewrap(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.name, err))
			continue
		}
		total.Add(rep)
		for k, n := range map[string]int{KEKChangeRewrapped: rep.Rewrapped, KEKChangeCurrent: rep.Current, KEKChangeUnreadable: rep.Unreadable} {
			if n > 0 {
				ch[o.name+"."+k] = strconv.Itoa(n)
			}
		}
	}
	ch[KEKChangeRewrapped] = strconv.Itoa(total.Rewrapped)
	ch[KEKChangeCurrent] = strconv.Itoa(total.Current)
	ch[KEKChangeUnreadable] = strconv.Itoa(total.Unreadable)
	return jobs.Result{Changes: ch}, errors.Join(errs...)
}
