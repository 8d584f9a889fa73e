package config

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration that reads from YAML and JSON as a Go duration
// string ("90s", "15m", "1h30m") or as an integer number of seconds.
type Duration time.Duration

// MaxDuration bounds every configured or requested duration (one year), so
// arithmetic on times can never overflow.
const MaxDuration = 365 * 24 * time.Hour

// ParseDuration parses a duration string or a decimal integer of seconds. It
// rejects negative values and values over MaxDuration.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(MaxDuration/time.Second) {
			return 0, fmt.Errorf("duration %q out of range (0 to %d seconds)", s, int64(MaxDuration/time.Second))
		}
		d = time.Duration(n) * time.Second
	} else {
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: use a number of seconds or a Go duration such as 90s, 15m or 1h", s)
		}
	}
	if d < 0 || d > MaxDuration {
		return 0, fmt.Errorf("duration %q out of range (0 to %s)", s, MaxDuration)
	}
	return d, nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts "15m" or 900.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a duration such as 15m or a number of seconds", n.Line)
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalJSON accepts "15m" or 900.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	} else {
		var f float64
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("expected a duration string such as \"15m\" or a number of seconds")
		}
		if f != math.Trunc(f) {
			return fmt.Errorf("a number of seconds must be an integer")
		}
		s = strconv.FormatFloat(f, 'f', 0, 64)
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }
