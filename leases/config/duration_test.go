package config

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "90", want: 90 * time.Second},
		{in: " 90 ", want: 90 * time.Second},
		{in: "90s", want: 90 * time.Second},
		{in: "15m", want: 15 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "0", want: 0},
		{in: "8760h", want: MaxDuration},
		{in: "31536000", want: MaxDuration},
		{in: "31536001", wantErr: true},
		{in: "8760h0m1s", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "-1s", wantErr: true},
		{in: "", wantErr: true},
		{in: "soon", wantErr: true},
		{in: "1.5", wantErr: true},
		{in: "9223372036854775807", wantErr: true},
		{in: "9223372036854775808", wantErr: true},
		{in: "9223372036854775807ns", wantErr: true},
		{in: "99999999999999999999h", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: `"90s"`, want: 90 * time.Second},
		{in: `90`, want: 90 * time.Second},
		{in: `1e3`, want: 1000 * time.Second},
		{in: `1.5`, wantErr: true},
		{in: `-5`, wantErr: true},
		{in: `1e300`, wantErr: true},
		{in: `true`, wantErr: true},
		{in: `"-5m"`, wantErr: true},
		{in: `{}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var d Duration
			err := json.Unmarshal([]byte(tt.in), &d)
			if (err != nil) != tt.wantErr || d.D() != tt.want {
				t.Fatalf("unmarshal %s = %v, %v; want %v, error %v", tt.in, d.D(), err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"90", "90s", "15m", "1h30m", "0", "-0", "+5", " 7 ", "8760h", "31536000", "31536001", "-1s", "1.5h", ".5s",
		"1e3", "0x10", "9223372036854775807", "9223372036854775807ns", "2562047h47m16.854775807s", "1µs", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("ParseDuration(%q) = %v with error %v; want 0", s, d, err)
			}
			return
		}
		if d < 0 || d > MaxDuration {
			t.Fatalf("ParseDuration(%q) = %v, outside [0, %v]", s, d, MaxDuration)
		}
		// What valet accepts it can write back and read again unchanged.
		b, err := json.Marshal(Duration(d))
		if err != nil {
			t.Fatal(err)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || back.D() != d {
			t.Fatalf("%q: %v round-trips through %s as %v, %v", s, d, b, back.D(), err)
		}
		// A JSON string holding s decodes to the same value.
		q, _ := json.Marshal(s)
		var fromJSON Duration
		if err := json.Unmarshal(q, &fromJSON); err != nil || fromJSON.D() != d {
			t.Fatalf("JSON %s = %v, %v; ParseDuration gave %v", q, fromJSON.D(), err, d)
		}
	})
}
