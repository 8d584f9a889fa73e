package builtin

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// CheckpointSettings are the settings of audit-checkpoint.
type CheckpointSettings struct {
	// Witnesses keep every checkpoint outside valet's database (default
	// none: the checkpoints are only in the audit log itself, which
	// proves little; see the README).
	Witnesses []WitnessConfig `yaml:"witnesses"`
}

// SetDefaults sets no witness.
func (s *CheckpointSettings) SetDefaults() {}

// Validate checks the witnesses; field is the job's key path.
func (s *CheckpointSettings) Validate(field string) error {
	var errs []error
	for i, w := range s.Witnesses {
		errs = append(errs, w.validate(fmt.Sprintf("%s.witnesses[%d]", field, i)))
	}
	return errors.Join(errs...)
}

func auditCheckpoint() Definition {
	return Definition{
		Description: "Signs the audit log's head with the checkpoint key and hands the checkpoint to the witnesses",
		Schedule:    "@hourly", Timeout: time.Minute, RunOnStart: true, RunAtShutdown: true, Default: true,
		Settings: func() any { s := config.Defaulted[CheckpointSettings](nil); return &s },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			s := settings.(*CheckpointSettings)
			if deps.Audit == nil {
				return nil, errors.New("needs the audit log")
			}
			if len(deps.KEK) == 0 {
				return nil, errors.New("the checkpoint key is sealed under the key-encryption key: set VALET_KEK or kek_file")
			}
			key, err := LoadCheckpointKey(deps.DataDir, deps.ring(), deps.Clock.Now())
			if err != nil {
				return nil, err
			}
			j := &checkpointJob{key: key, origin: deps.PublicURL, head: deps.Audit}
			stdout := deps.Stdout
			if stdout == nil {
				stdout = os.Stdout
			}
			for _, w := range s.Witnesses {
				j.witnesses = append(j.witnesses, newWitness(w, stdout))
			}
			return j, nil
		},
	}
}

// checkpointJob signs the log's head and hands it to the witnesses.
type checkpointJob struct {
	key       ed25519.PrivateKey
	origin    string
	head      AuditHead
	witnesses []witness
}

// Run signs the head as committed now, gives the checkpoint to every
// witness (a witness that fails fails the run, after the others had
// theirs) and records it in the log (an audit.checkpoint record beside
// the run's job.end).
func (j *checkpointJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	h, err := j.head.AuditHead(ctx)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("read the audit log's head: %w", err)
	}
	cp := audit.SignCheckpoint(j.key, j.origin, h, now)
	ch := map[string]string{"seq": strconv.FormatUint(cp.Seq, 10), "hash": cp.Hash, "key_id": cp.KeyID}
	var errs []error
	var ok []string
	for _, w := range j.witnesses {
		if err := w.witness(ctx, cp); err != nil {
			errs = append(errs, fmt.Errorf("witness %s: %w", w.name(), err))
			continue
		}
		ok = append(ok, w.name())
	}
	ch["witnesses"] = strings.Join(ok, ", ")
	if len(j.witnesses) == 0 {
		ch["witnesses"] = "none (the checkpoint is only in the audit log)"
	}
	rec := audit.Entry{Kind: audit.KindCheckpoint, Actor: audit.Actor{Type: audit.ActorJob, ID: AuditCheckpoint}, Details: map[string]string{
		"origin": cp.Origin, "seq": ch["seq"], "hash": cp.Hash, "time": cp.Time.Format(time.RFC3339Nano), "key_id": cp.KeyID, "signature": cp.Signature,
	}}
	return jobs.Result{Changes: ch, Records: []audit.Entry{rec}}, errors.Join(errs...)
}

// CheckpointFromRecord reads the checkpoint an audit.checkpoint record
// holds.
func CheckpointFromRecord(r audit.Record) (audit.Checkpoint, error) {
	d := r.Details
	seq, err := strconv.ParseUint(d["seq"], 10, 64)
	if err != nil {
		return audit.Checkpoint{}, fmt.Errorf("record %d: not a checkpoint", r.Seq)
	}
	t, err := time.Parse(time.RFC3339Nano, d["time"])
	if err != nil {
		return audit.Checkpoint{}, fmt.Errorf("record %d: not a checkpoint", r.Seq)
	}
	return audit.Checkpoint{Origin: d["origin"], Seq: seq, Hash: d["hash"], Time: t, KeyID: d["key_id"], Signature: d["signature"]}, nil
}
