package broker

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/config"
)

// Every error kind a backend can report reaches the client with its own
// code and the backend's message; other errors keep the generic handling.
func TestBackendErrorKinds(t *testing.T) {
	timeout := config.Duration(10 * time.Second)
	cases := []struct {
		name     string
		err      error
		wantCode string
		wantMsg  string
	}{
		{"invalid", backends.Errorf(backends.ErrInvalid, "scope.x is not understood"), EINVALID, "scope.x is not understood"},
		{"forbidden", backends.Errorf(backends.ErrForbidden, "needs the agent attribute %q", "team"), EFORBIDDEN, `needs the agent attribute "team"`},
		{"conflict", backends.Errorf(backends.ErrConflict, "too little time left to renew"), ECONFLICT, "too little time left to renew"},
		{"bad response", backends.Errorf(backends.ErrBadResponse, "lower the Vault role's default_ttl"), EBADGATEWAY, "lower the Vault role's default_ttl"},
		{"wrapped kind", fmt.Errorf("mint: %w", backends.Errorf(backends.ErrInvalid, "lease too short")), EINVALID, "lease too short"},
		{"unavailable", fmt.Errorf("vault read: %w: connection refused", backends.ErrUnavailable), EUNAVAILABLE, "backend b is unavailable; retry later"},
		{"unknown kind", backends.Errorf(errors.New("other"), "secret detail"), EBADGATEWAY, "backend b failed to issue the credential"},
		{"plain error", errors.New("vault: 500 internal"), EBADGATEWAY, "backend b failed to issue the credential"},
		{"broker error", Errorf(ECONFLICT, "as is"), ECONFLICT, "as is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := backendError(context.Background(), c.err, "b", "issue the credential", timeout)
			if code, msg := ErrorCode(got), ErrorMessage(got); code != c.wantCode || msg != c.wantMsg {
				t.Fatalf("backendError(%v) = %s %q, want %s %q", c.err, code, msg, c.wantCode, c.wantMsg)
			}
			var be *backends.Error
			if errors.As(c.err, &be) && !errors.Is(got, be.Kind) {
				t.Errorf("the backend's kind %v is no longer in the chain of %v", be.Kind, got)
			}
		})
	}
}

// A scope refusal keeps its message and is marked ErrScopeRefused.
func TestBackendScopeRefusal(t *testing.T) {
	b := &Broker{backends: map[string]backends.Backend{"b": scopeRefuser{}}}
	err := b.checkScope(&Role{Name: "r", Backend: "b"}, map[string]any{"x": 1})
	if ErrorCode(err) != EINVALID || ErrorMessage(err) != "scope.x is not understood" || !errors.Is(err, ErrScopeRefused) {
		t.Fatalf("checkScope = %v (%s %q), want EINVALID with the backend's message and ErrScopeRefused", err, ErrorCode(err), ErrorMessage(err))
	}
}

type scopeRefuser struct{ backends.Backend }

func (scopeRefuser) CheckScope(backends.RoleSpec, map[string]any) error {
	return backends.Errorf(backends.ErrInvalid, "scope.x is not understood")
}
