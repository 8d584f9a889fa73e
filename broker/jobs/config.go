package jobs

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/valet-broker/valet/leases/config"
)

// Spec is one entry of the jobs section of the configuration file:
//
//	jobs:
//	  - name: signing-key-rotation   # a job of valet's (builtin.Registry)
//	    schedule: "@weekly"          # cron (optional seconds field) or descriptor
//	    jitter: 10m
//	    timeout: 1m
//	    run_on_start: true
//	    enabled: true
//	    prepublish: 1h               # the job's own settings
//
// Every job valet knows runs by default with its definition's schedule,
// timeout and settings; an entry changes only the keys it sets, and
// enabled: false turns the job off. Keys left out keep the definition's
// defaults (the pointers are nil for an absent key).
type Spec struct {
	// Name names the job: the name of one of valet's jobs, or any name
	// when Type says which job it is (to run one job twice with other
	// settings).
	Name string `yaml:"name"`
	// Type is the job's definition (default: Name).
	Type string `yaml:"type"`
	// Schedule is a cron expression (five fields, or six with seconds
	// first) or a descriptor (@hourly, @daily, @weekly, @monthly,
	// @yearly, @every <duration> of at least 1s), in UTC unless it starts
	// with CRON_TZ=<zone>.
	Schedule *string `yaml:"schedule"`
	// Jitter delays each scheduled run by a random duration below it (0:
	// none).
	Jitter *config.Duration `yaml:"jitter"`
	// Timeout cancels a run that lasts longer (positive).
	Timeout *config.Duration `yaml:"timeout"`
	// RunOnStart runs the job once at start when a scheduled run was
	// missed while valet was down.
	RunOnStart *bool `yaml:"run_on_start"`
	// Enabled turns the job off when false.
	Enabled *bool `yaml:"enabled"`
	// Settings are the job's own keys, decoded strictly by its definition.
	Settings map[string]any `yaml:",inline"`
}

// Kind is what the configuration needs to know of a job definition: its
// defaults, and how to check its settings.
type Kind struct {
	Description string
	Schedule    string
	Timeout     time.Duration
	Jitter      time.Duration
	RunOnStart  bool
	// Default makes the job run without an entry in the jobs section.
	Default bool
	// CheckSettings decodes and checks the job's own settings (nil for a
	// job without any), naming the full key path of each error under
	// field ("jobs[1]").
	CheckSettings func(field string, settings map[string]any) error
}

// Resolved is a job the configuration turns on, with every default
// applied.
type Resolved struct {
	Name, Type, Schedule string
	Parsed               Schedule
	Jitter, Timeout      time.Duration
	RunOnStart           bool
	Settings             map[string]any
	// Field is the job's key path ("jobs[1]"), or "" for a default job
	// without an entry.
	Field string
}

// Resolve applies the definitions' defaults to the jobs section and
// returns the enabled jobs, the default ones first in kinds' order, or
// every error of the section, each naming its key path ("jobs[2].schedule
// ..."). order lists the kinds' names in the order default jobs run.
func Resolve(specs []Spec, kinds map[string]Kind, order []string) ([]Resolved, error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	byName := map[string]int{}
	for i, sp := range specs {
		f := fmt.Sprintf("jobs[%d]", i)
		errs = append(errs, config.CheckName(f+".name", sp.Name, names)...)
		byName[sp.Name] = i
		typ := sp.typ()
		k, ok := kinds[typ]
		if !ok {
			key := ".name"
			if sp.Type != "" {
				key = ".type"
			}
			add("%s%s %q is not one of valet's jobs (%s)", f, key, typ, strings.Join(order, ", "))
			continue
		}
		if sp.Schedule != nil {
			if _, err := ParseSchedule(*sp.Schedule); err != nil {
				add("%s.schedule %q: %v", f, *sp.Schedule, err)
			}
		}
		if sp.Jitter != nil && *sp.Jitter < 0 {
			add("%s.jitter must not be negative (0: none); it is %s", f, *sp.Jitter)
		}
		if sp.Timeout != nil && *sp.Timeout <= 0 {
			add("%s.timeout must be positive; it is %s", f, *sp.Timeout)
		}
		if k.CheckSettings != nil {
			if err := k.CheckSettings(f, sp.Settings); err != nil {
				errs = append(errs, err)
			}
		} else {
			for key := range sp.Settings {
				add("%s.%s is not a setting of job %s (it has none)", f, key, typ)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var out []Resolved
	for _, typ := range order {
		if _, configured := byName[typ]; configured || !kinds[typ].Default {
			continue
		}
		out = append(out, resolve(typ, "", kinds[typ], Spec{Name: typ}))
	}
	for i, sp := range specs {
		if sp.Enabled != nil && !*sp.Enabled {
			continue
		}
		out = append(out, resolve(sp.typ(), fmt.Sprintf("jobs[%d]", i), kinds[sp.typ()], sp))
	}
	return out, nil
}

func (sp Spec) typ() string {
	if sp.Type != "" {
		return sp.Type
	}
	return sp.Name
}

// resolve fills an entry's absent keys from its kind.
func resolve(typ, field string, k Kind, sp Spec) Resolved {
	r := Resolved{Name: sp.Name, Type: typ, Field: field, Schedule: k.Schedule, Jitter: k.Jitter, Timeout: k.Timeout,
		RunOnStart: k.RunOnStart, Settings: sp.Settings}
	if sp.Schedule != nil {
		r.Schedule = *sp.Schedule
	}
	if sp.Jitter != nil {
		r.Jitter = sp.Jitter.D()
	}
	if sp.Timeout != nil {
		r.Timeout = sp.Timeout.D()
	}
	if sp.RunOnStart != nil {
		r.RunOnStart = *sp.RunOnStart
	}
	r.Parsed, _ = ParseSchedule(r.Schedule) // checked above; a kind's default parses (builtin tests it)
	return r
}

// Schedule says when a job next comes due after a time.
type Schedule interface {
	// Next returns the first time after t the schedule fires.
	Next(t time.Time) time.Time
}

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a cron expression — minute, hour, day of month,
// month, day of week, optionally preceded by seconds — or a descriptor
// (@yearly, @monthly, @weekly, @daily, @hourly, @every <duration>), with
// github.com/robfig/cron/v3. Times are UTC unless the expression starts
// with CRON_TZ=<IANA zone>. It refuses @every below one second and a
// schedule that never fires (February 30th).
func ParseSchedule(s string) (Schedule, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("must not be empty: write a cron expression (\"0 3 * * *\") or a descriptor (\"@daily\", \"@every 1h\")")
	}
	if d, ok := strings.CutPrefix(s, "@every "); ok {
		if every, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && every < time.Second {
			return nil, fmt.Errorf("@every must be at least 1s; it is %s", every)
		}
	}
	if !strings.HasPrefix(s, "CRON_TZ=") && !strings.HasPrefix(s, "TZ=") {
		s = "CRON_TZ=UTC " + s
	}
	sch, err := parser.Parse(s)
	if err != nil {
		return nil, err
	}
	// Five years covers every calendar a cron expression can describe
	// that ever fires.
	from := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if next := sch.Next(from); next.IsZero() || next.After(from.AddDate(5, 0, 0)) {
		return nil, errors.New("never fires (no date matches it)")
	}
	return sch, nil
}
