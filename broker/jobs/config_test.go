package jobs_test

import (
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/config"
)

func TestParseSchedule(t *testing.T) {
	from := time.Date(2030, 3, 1, 10, 20, 30, 0, time.UTC)
	cases := []struct {
		name, spec string
		next       time.Time // zero: refused
		err        string
	}{
		{"five fields, UTC", "0 3 * * *", time.Date(2030, 3, 2, 3, 0, 0, 0, time.UTC), ""},
		{"six fields, seconds first", "45 20 10 * * *", time.Date(2030, 3, 1, 10, 20, 45, 0, time.UTC), ""},
		{"@daily", "@daily", time.Date(2030, 3, 2, 0, 0, 0, 0, time.UTC), ""},
		{"@hourly", "@hourly", time.Date(2030, 3, 1, 11, 0, 0, 0, time.UTC), ""},
		{"@every", "@every 90s", from.Add(90 * time.Second), ""},
		{"time zone", "CRON_TZ=Europe/Paris 0 3 * * *", time.Date(2030, 3, 2, 2, 0, 0, 0, time.UTC), ""},
		{"empty", " ", time.Time{}, "must not be empty"},
		{"garbage", "every day", time.Time{}, "expected"},
		{"too fast", "@every 500ms", time.Time{}, "@every must be at least 1s"},
		{"never", "0 0 30 2 *", time.Time{}, "never fires"},
		{"unknown descriptor", "@fortnightly", time.Time{}, "unrecognized descriptor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := jobs.ParseSchedule(tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Next(from); !got.Equal(tc.next) {
				t.Errorf("next %v, want %v", got, tc.next)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	kinds := map[string]jobs.Kind{
		"rotate": {Schedule: "@weekly", Timeout: time.Minute, Default: true, RunOnStart: true,
			CheckSettings: func(field string, s map[string]any) error {
				for k := range s {
					if k != "prepublish" {
						return &settingErr{field + "." + k + " is not a setting"}
					}
				}
				return nil
			}},
		"house": {Schedule: "@every 5m", Timeout: time.Minute, Default: true},
		"extra": {Schedule: "@daily", Timeout: time.Minute},
	}
	order := []string{"rotate", "house", "extra"}
	str := func(s string) *string { return &s }
	dur := func(d time.Duration) *config.Duration { c := config.Duration(d); return &c }
	off := false
	cases := []struct {
		name  string
		specs []jobs.Spec
		want  []string // name:schedule:timeout
		err   string
	}{
		{"defaults", nil, []string{"rotate:@weekly:1m0s", "house:@every 5m:1m0s"}, ""},
		{"override keeps the other defaults", []jobs.Spec{{Name: "house", Schedule: str("@hourly")}},
			[]string{"rotate:@weekly:1m0s", "house:@hourly:1m0s"}, ""},
		{"disabled", []jobs.Spec{{Name: "rotate", Enabled: &off}}, []string{"house:@every 5m:1m0s"}, ""},
		{"a second instance by type", []jobs.Spec{{Name: "extra-2", Type: "extra", Timeout: dur(time.Hour)}},
			[]string{"rotate:@weekly:1m0s", "house:@every 5m:1m0s", "extra-2:@daily:1h0m0s"}, ""},
		{"unknown job", []jobs.Spec{{Name: "house"}, {Name: "mystery"}}, nil, `jobs[1].name "mystery" is not one of valet's jobs (rotate, house, extra)`},
		{"unknown type", []jobs.Spec{{Name: "x", Type: "nope"}}, nil, `jobs[0].type "nope" is not one of valet's jobs`},
		{"bad schedule", []jobs.Spec{{Name: "house"}, {Name: "rotate", Schedule: str("@every 0s")}}, nil, `jobs[1].schedule "@every 0s": @every must be at least 1s`},
		{"zero timeout", []jobs.Spec{{Name: "house", Timeout: dur(0)}}, nil, "jobs[0].timeout must be positive; it is 0s"},
		{"negative jitter", []jobs.Spec{{Name: "house", Jitter: dur(-time.Second)}}, nil, "jobs[0].jitter must not be negative"},
		{"twice", []jobs.Spec{{Name: "house"}, {Name: "house"}}, nil, `jobs[1].name "house" is used twice`},
		{"setting of a job without settings", []jobs.Spec{{Name: "house", Settings: map[string]any{"batch": 3}}}, nil,
			"jobs[0].batch is not a setting of job house (it has none)"},
		{"setting checked by its job", []jobs.Spec{{Name: "rotate", Settings: map[string]any{"bogus": 3}}}, nil,
			"jobs[0].bogus is not a setting"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := jobs.Resolve(tc.specs, kinds, order)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range got {
				names = append(names, r.Name+":"+r.Schedule+":"+r.Timeout.String())
				if r.Parsed == nil {
					t.Errorf("%s: schedule not parsed", r.Name)
				}
			}
			if strings.Join(names, ",") != strings.Join(tc.want, ",") {
				t.Errorf("resolved %v, want %v", names, tc.want)
			}
		})
	}
}

type settingErr struct{ msg string }

func (e *settingErr) Error() string { return e.msg }
