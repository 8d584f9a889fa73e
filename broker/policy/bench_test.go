package policy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/valet-broker/valet/broker"
)

// BenchmarkAuthorize decides a mint against the example policy set (8
// policies: permits, guardrail forbids with ip, time and set conditions) for
// a Kubernetes service account with the claims of a real projected token.
func BenchmarkAuthorize(b *testing.B) {
	e, err := NewEngine(Options{Dir: exampleDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	req := benchRequest()
	ctx := context.Background()
	dec, err := e.Authorize(ctx, req)
	if err != nil || !dec.Allowed {
		b.Fatalf("benchmark request not allowed: %+v, %v", dec, err)
	}

	// The example set reads claims (ci-deploy-main); a set that names only
	// mapped attributes skips converting them.
	files, err := readDirFiles("policy", exampleDir, ".cedar")
	if err != nil {
		b.Fatal(err)
	}
	files["10-roles.cedar"] = bytes.ReplaceAll(files["10-roles.cedar"], []byte("principal.claims."), []byte("principal."))
	noClaims, err := LoadFiles(files)
	if err != nil || noClaims.needClaims {
		b.Fatalf("set without claims: needClaims %v, err %v", noClaims != nil && noClaims.needClaims, err)
	}
	b.Run("without-claims", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := noClaims.Authorize(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.Authorize(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.Authorize(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchRequest is a mint by a Kubernetes service account, with the claims
// (and mapped attributes) of a projected service account token.
func benchRequest() broker.AuthzRequest {
	req := baseRequest()
	req.Principal.Claims = map[string]any{
		"aud": []any{"valet"},
		"exp": float64(1772449200),
		"iat": float64(1772445600),
		"nbf": float64(1772445600),
		"iss": "https://kubernetes.default.svc",
		"jti": "0b4b6f0e-7c55-4a8e-9d0c-3b7a3c5d2e11",
		"sub": "system:serviceaccount:agents:bot",
		"kubernetes.io": map[string]any{
			"namespace":      "agents",
			"node":           map[string]any{"name": "node-7", "uid": "c3e0f5a2-1b7d-4c1e-9a55-7a1f0d3e9b21"},
			"pod":            map[string]any{"name": "bot-5d8f7c9b4-x2k4q", "uid": "7f0e2a94-3c1b-4d6e-8f2a-5b9c1d0e3f47"},
			"serviceaccount": map[string]any{"name": "bot", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
			"warnafter":      float64(1772446200),
		},
	}
	req.Principal.Attributes = map[string]string{"namespace": "agents", "service_account": "bot", "pod": "bot-5d8f7c9b4-x2k4q"}
	return req
}

// BenchmarkCedarRequest measures the part of Authorize that translates the
// request into Cedar entities, without evaluation.
func BenchmarkCedarRequest(b *testing.B) {
	set, err := Load(exampleDir)
	if err != nil {
		b.Fatal(err)
	}
	req := benchRequest()
	b.ReportAllocs()
	for b.Loop() {
		set.cedarRequest(req)
	}
}
