package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker"
)

// This file measures containment: the time from a signal accepted to the
// last backend revocation confirmed, for an agent holding many leases,
// and, to choose how valet revokes many Vault tokens at once, revoking
// them one by one in parallel by accessor against revoking a per-agent
// parent token that takes its children with it.

// benchSignalToken is the token of the bench server's signal source.
const benchSignalToken = "valet_sig_bench"

// signalSource is the signals section of the bench servers. Their
// set-up mints a thousand credentials for one agent in a second, which
// the mint-rate detector would flag (a signal of its own, raising the
// agent's risk): it is off, so that only the bench's signal acts.
func signalSource() string {
	return "signals:\n  sources:\n    - name: bench\n      token_sha256: " + broker.HashToken(benchSignalToken) + "\n" +
		"  detectors:\n    mint_rate: {enabled: false}\n"
}

// containResult is one containment measurement.
type containResult struct {
	what     string
	leases   int
	accepted time.Duration // the signal's answer (its leases ended and queued)
	last     time.Duration // the signal's acceptance to its last lease's lease.revoked record
}

// mintN mints n leases of role for agent sub (agent-0: e's first agent)
// with 16 connections.
func mintN(s *server, e *env, sub, role string, n int) {
	u, _ := url.Parse(s.url)
	tok := e.attestations(1, 1, false)[0]
	if sub != "agent-0" {
		t, err := e.issuer.Sign(map[string]any{"sub": sub, "aud": "valet", "exp": time.Now().Add(time.Hour).Unix()})
		must(err)
		tok = t
	}
	req := request(u.Host, "/v1/credentials", tok, []byte(`{"role":"`+role+`"}`))
	var made atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn, err := dial(u.Host)
			must(err)
			defer cn.c.Close()
			for made.Add(1) <= int64(n) {
				st, err := cn.roundTrip(req)
				if err != nil || st != 201 {
					fatal("mint %s: status %d, %v", role, st, err)
				}
			}
		}()
	}
	wg.Wait()
}

// contain sends a high signal for agent and measures until every lease it
// ended is confirmed revoked at its backend, from the audit log: the
// signal's received_at and the latest lease.revoked record of the agent
// (both the server's clock).
func contain(s *server, what, agent string, n int) containResult {
	body, _ := json.Marshal(map[string]string{"agent_id": agent, "severity": "high", "reason": "bench", "action": "revoke"})
	req, _ := http.NewRequest("POST", s.url+"/v1/signals", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+benchSignalToken)
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	must(err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	accepted := time.Since(t0)
	if resp.StatusCode != 201 {
		fatal("signal: %d %s", resp.StatusCode, raw)
	}
	var res struct {
		Signal struct {
			ReceivedAt time.Time `json:"received_at"`
		} `json:"signal"`
		Ended int `json:"leases_ended"`
	}
	must(json.Unmarshal(raw, &res))
	if res.Ended != n {
		fatal("the signal ended %d leases, want %d", res.Ended, n)
	}
	// Wait until nothing of the agent is left to revoke.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		left := 0
		for _, st := range []string{"revoking", "irrevocable", "active"} {
			left += len(operatorList(s, "/v1/leases?limit=1&state="+st+"&agent_id="+url.QueryEscape(agent), "leases"))
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			fatal("%s: leases still not revoked 2 minutes after the signal", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var last time.Time
	confirmed := 0
	after := ""
	for {
		recs := operatorList(s, "/v1/audit?limit=1000&kind=lease.revoked&agent_id="+url.QueryEscape(agent)+after, "records")
		for _, r := range recs {
			t, err := time.Parse(time.RFC3339Nano, r["time"].(string))
			must(err)
			if !t.Before(res.Signal.ReceivedAt) {
				confirmed++
				if t.After(last) {
					last = t
				}
			}
		}
		if len(recs) < 1000 {
			break
		}
		after = fmt.Sprintf("&after=%v", recs[len(recs)-1]["seq"])
	}
	if confirmed != n {
		fatal("%s: %d revocations confirmed, want %d", what, confirmed, n)
	}
	return containResult{what: what, leases: n, accepted: accepted, last: last.Sub(res.Signal.ReceivedAt)}
}

// operatorList GETs path as the operator and returns the list under key.
func operatorList(s *server, path, key string) []map[string]any {
	req, _ := http.NewRequest("GET", s.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+benchOperatorToken)
	resp, err := http.DefaultClient.Do(req)
	must(err)
	defer resp.Body.Close()
	var out map[string]json.RawMessage
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		fatal("GET %s: %d %s", path, resp.StatusCode, b)
	}
	must(json.NewDecoder(resp.Body).Decode(&out))
	var list []map[string]any
	must(json.Unmarshal(out[key], &list))
	return list
}

// containBench measures containment of jwtN jwt leases, then of each of
// vaultNs Vault leases (each for an agent of its own), against a Vault
// with file storage.
func (b *bench) containBench(jwtN int, vaultNs []int) []containResult {
	var out []containResult
	if jwtN > 0 {
		e := newEnv("", "")
		appendConfig(e, signalSource())
		s := b.serve(e)
		mintN(s, e, "agent-0", "bench", jwtN)
		out = append(out, contain(s, "jwt", "bench/agent-0", jwtN))
		s.stop()
		os.RemoveAll(e.dir)
	}
	if len(vaultNs) == 0 {
		return out
	}
	v := vaulttest.StartFile(benchTB{})
	setupBenchVault(v)
	e := newEnv(fmt.Sprintf(`  - name: vault-main
    type: vault
    address: %s
    auth: {method: token, token_file: %s}
`, v.Addr, v.TokenFile()), `  - name: bench-vault
    backend: vault-main
    ttl: 15m
    max_ttl: 1h
    params: {token_role: valet-agents, policies: [agent-read]}
`)
	appendConfig(e, signalSource())
	cleanups = append(cleanups, func() { os.RemoveAll(e.dir) })
	s := b.serve(e)
	cleanups = append(cleanups, s.stop)
	for i, n := range vaultNs {
		sub := fmt.Sprintf("vault-agent-%d", i)
		mintN(s, e, sub, "bench-vault", n)
		out = append(out, contain(s, "vault", "bench/"+sub, n))
	}
	runCleanups()
	return out
}

// appendConfig adds YAML to e's config file.
func appendConfig(e *env, yaml string) {
	p := e.dir + "/config.yaml"
	b, err := os.ReadFile(p)
	must(err)
	must(os.WriteFile(p, append(b, yaml...), 0o600))
}

// setupBenchVault makes the policy and the orphan token role valet mints
// through.
func setupBenchVault(v *vaulttest.Server) {
	v.Policy("agent-read", `path "secret/data/agents/*" { capabilities = ["read"] }`)
	v.Write("auth/token/roles/valet-agents", map[string]any{
		"allowed_policies": "agent-read", "orphan": true, "renewable": true, "token_explicit_max_ttl": "1h",
	})
}

func printContain(rs []containResult) {
	fmt.Println("containment: a high signal for one agent, from its acceptance to the last backend revocation confirmed (audit records):")
	fmt.Printf("  %-8s %8s %16s %18s %10s\n", "backend", "leases", "signal answered", "last confirmed", "target")
	for _, r := range rs {
		target := ""
		switch {
		case r.what == "jwt" && r.leases == 1000:
			target = verdict(r.last <= time.Second, "≤ 1 s")
		case r.what == "vault" && r.leases == 1000:
			target = verdict(r.last <= 5*time.Second, "≤ 5 s")
		}
		fmt.Printf("  %-8s %8d %16s %18s %10s\n", r.what, r.leases, r.accepted.Round(time.Millisecond), r.last.Round(time.Millisecond), target)
	}
	fmt.Println()
}

func verdict(ok bool, target string) string {
	if ok {
		return target + ": met"
	}
	return target + ": NOT met"
}

// strategyResult compares two ways of revoking n Vault tokens.
type strategyResult struct {
	n                 int
	accessor          map[int]time.Duration // by concurrency: every token revoked by accessor
	parentCall        time.Duration         // the parent's revocation answered
	parentGone        time.Duration         // every child refused
	createdByAccessor time.Duration
	createdUnder      time.Duration
}

// vaultStrategies measures, against one Vault with file storage, n
// tokens created through valet's orphan token role and revoked one by one
// by accessor at each concurrency, against n non-orphan children created
// under a per-agent parent token and revoked by revoking the parent: the
// time until its revocation answers, and until Vault refuses every child.
func vaultStrategies(n int, levels []int) strategyResult {
	v := vaulttest.StartFile(benchTB{})
	setupBenchVault(v)
	v.Write("auth/token/roles/valet-children", map[string]any{
		"allowed_policies": "agent-read", "orphan": false, "renewable": true, "token_explicit_max_ttl": "1h",
	})
	root := v.Client()
	res := strategyResult{n: n, accessor: map[int]time.Duration{}}
	create := func(c *api.Client, path string) []string {
		acc := make([]string, n)
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					sec, err := c.Logical().Write(path, map[string]any{"policies": []string{"agent-read"}, "ttl": "15m"})
					if err != nil || sec == nil || sec.Auth == nil {
						fatal("create a token at %s: %v", path, err)
					}
					acc[i] = sec.Auth.Accessor
				}
			}()
		}
		wg.Wait()
		return acc
	}
	alive := func(accs []string) int {
		n := 0
		for _, a := range accs {
			if sec, err := root.Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": a}); err == nil && sec != nil {
				n++
			}
		}
		return n
	}
	for _, c := range levels {
		t0 := time.Now()
		accs := create(root, "auth/token/create/valet-agents")
		res.createdByAccessor = time.Since(t0)
		t0 = time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < c; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					if _, err := root.Logical().Write("auth/token/revoke-accessor", map[string]any{"accessor": accs[i]}); err != nil {
						fatal("revoke by accessor: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		res.accessor[c] = time.Since(t0)
		if left := alive(accs); left != 0 {
			fatal("%d tokens alive after revoking them by accessor", left)
		}
	}

	// A parent token per agent (as valet would hold one), allowed to
	// create tokens, its children created with it.
	v.Policy("token-create", `path "auth/token/create" { capabilities = ["create", "update"] }`)
	sec, err := root.Logical().Write("auth/token/create", map[string]any{"policies": []string{"agent-read", "token-create"}, "ttl": "1h"})
	if err != nil {
		fatal("create the parent token: %v", err)
	}
	parent, err := root.Clone()
	must(err)
	parent.SetToken(sec.Auth.ClientToken)
	t0 := time.Now()
	children := create(parent, "auth/token/create")
	res.createdUnder = time.Since(t0)
	t0 = time.Now()
	if _, err := root.Logical().Write("auth/token/revoke-accessor", map[string]any{"accessor": sec.Auth.Accessor}); err != nil {
		fatal("revoke the parent: %v", err)
	}
	res.parentCall = time.Since(t0)
	for alive(children) > 0 {
		if time.Since(t0) > 2*time.Minute {
			fatal("children of the revoked parent still alive after 2 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.parentGone = time.Since(t0)
	runCleanups()
	return res
}

func printStrategies(r strategyResult) {
	fmt.Printf("Vault mass revocation, %d tokens (Vault v1.13.0, file storage), two ways:\n", r.n)
	var cs []int
	for c := range r.accessor {
		cs = append(cs, c)
	}
	sort.Ints(cs)
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s at %d in parallel", r.accessor[c].Round(time.Millisecond), c))
	}
	fmt.Printf("  revoke each token by accessor (valet's way, orphan tokens):    %s\n", strings.Join(parts, ", "))
	fmt.Printf("  revoke a per-agent parent token that takes its %d children:  revoke answered in %s, every child refused after %s\n",
		r.n, r.parentCall.Round(time.Millisecond), r.parentGone.Round(time.Millisecond))
	fmt.Printf("  (creating them: %s through the orphan token role, %s as children of the parent)\n\n",
		r.createdByAccessor.Round(time.Millisecond), r.createdUnder.Round(time.Millisecond))
}
