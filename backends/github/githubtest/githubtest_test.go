package githubtest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

func start(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TestAppJWTChecks: the app endpoints accept only what GitHub accepts.
func TestAppJWTChecks(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := start(t, Options{Now: func() time.Time { return now }})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(key *rsa.PrivateKey, alg jwa.SignatureAlgorithm, iss any, iat, exp time.Time) string {
		b := jwt.NewBuilder().IssuedAt(iat).Expiration(exp).Claim("iss", iss)
		tok, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		out, err := jwt.Sign(tok, jwt.WithKey(alg, key))
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	cases := []struct {
		name, token string
		status      int
		msg         string
	}{
		{"app id as iss", sign(s.key, jwa.RS256, "1", now.Add(-time.Minute), now.Add(9*time.Minute)), 200, ""},
		{"client id as iss", sign(s.key, jwa.RS256, "Iv1.test", now, now.Add(time.Minute)), 200, ""},
		{"no token", "", 401, "Requires authentication"},
		{"another key", sign(other, jwa.RS256, "1", now, now.Add(time.Minute)), 401, "could not be decoded"},
		{"RS512", sign(s.key, jwa.RS512, "1", now, now.Add(time.Minute)), 401, "could not be decoded"},
		{"another app", sign(s.key, jwa.RS256, "2", now, now.Add(time.Minute)), 401, "Integration not found"},
		{"expired", sign(s.key, jwa.RS256, "1", now.Add(-11*time.Minute), now.Add(-time.Minute)), 401, "'Expiration time' claim ('exp') must be a numeric value"},
		{"exp too far", sign(s.key, jwa.RS256, "1", now, now.Add(11*time.Minute)), 401, "too far in the future"},
		{"iat in the future", sign(s.key, jwa.RS256, "1", now.Add(2*time.Minute), now.Add(5*time.Minute)), 401, "'Issued at' claim"},
		{"iat within the drift", sign(s.key, jwa.RS256, "1", now.Add(50*time.Second), now.Add(5*time.Minute)), 200, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", s.URL+"api/v3/app", nil)
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d (%v), want %d", resp.StatusCode, body, c.status)
			}
			if msg, _ := body["message"].(string); c.msg != "" && !strings.Contains(msg, c.msg) {
				t.Fatalf("message %q, want %q", msg, c.msg)
			}
		})
	}
}
