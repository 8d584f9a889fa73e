package builtin

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/config"
)

// AuditArchiveSettings are the settings of audit-archive.
type AuditArchiveSettings struct {
	// HotWindow is how long audit records stay in the database before
	// they move to the archive (default 720h; 0 moves every record at
	// each run). Records in the archive are listed and verified as those
	// in the database are.
	HotWindow config.Duration `yaml:"hot_window"`
}

// SetDefaults sets hot_window 720h (30 days).
func (s *AuditArchiveSettings) SetDefaults() { s.HotWindow = config.Duration(30 * 24 * time.Hour) }

func auditArchive() Definition {
	return Definition{
		Description: "Moves audit records older than hot_window from the database into sealed segment files under data_dir/audit/archive; listing and valet audit verify read both",
		Schedule:    "@every 10m", Timeout: 5 * time.Minute, Default: true,
		Settings: func() any { s := config.Defaulted[AuditArchiveSettings](nil); return &s },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			if deps.Archive == nil {
				return nil, errors.New("needs the audit archive")
			}
			return &auditArchiveJob{archive: deps.Archive, hot: settings.(*AuditArchiveSettings).HotWindow.D()}, nil
		},
	}
}

// auditArchiveJob moves records older than hot out of the database.
type auditArchiveJob struct {
	archive AuditArchiver
	hot     time.Duration
}

// Run archives the records older than now-hot. Changes say how many
// records and segments it archived and the last archived record.
func (j *auditArchiveJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	a, err := j.archive.ArchiveAudit(ctx, now.Add(-j.hot))
	return jobs.Result{Changes: map[string]string{
		"records_archived": strconv.Itoa(a.Records), "segments": strconv.Itoa(a.Segments), "archived_through": strconv.FormatUint(a.Through, 10),
	}}, err
}
