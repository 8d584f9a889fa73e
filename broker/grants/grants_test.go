package grants

import (
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
)

func TestBindingCoversEveryField(t *testing.T) {
	base := Request{AgentID: "k8s/a", Role: "r", TTL: time.Minute, Scope: map[string]any{"scopes": []any{"x"}}, Reason: "why",
		Lineage: leases.Lineage{Issuer: "i", JTI: "j"}}
	h := Binding(base)
	if Binding(base) != h {
		t.Fatal("binding is not deterministic")
	}
	changes := map[string]func(r *Request){
		"agent": func(r *Request) { r.AgentID = "k8s/b" },
		"role":  func(r *Request) { r.Role = "r2" },
		"ttl":   func(r *Request) { r.TTL = 2 * time.Minute },
		// Redeem mints for the exact TTL, so the binding covers it.
		"ttl below a millisecond": func(r *Request) { r.TTL += 500 * time.Microsecond },
		"scope":                   func(r *Request) { r.Scope = map[string]any{"scopes": []any{"y"}} },
		"reason":                  func(r *Request) { r.Reason = "other" },
		"lineage":                 func(r *Request) { r.Lineage.JTI = "k" },
	}
	for name, change := range changes {
		r := base
		change(&r)
		if Binding(r) == h {
			t.Errorf("changing the %s does not change the binding", name)
		}
	}
}

// Grants stored before the binding covered TTLs below a millisecond keep
// their bindings: a whole-millisecond TTL hashes as it always did.
func TestBindingOfWholeMillisecondTTLIsUnchanged(t *testing.T) {
	r := Request{AgentID: "k8s/a", Role: "r", TTL: time.Minute, Scope: map[string]any{"scopes": []any{"x"}}, Reason: "why",
		Lineage: leases.Lineage{Issuer: "i", JTI: "j"}}
	if got, want := Binding(r), "c540d6488a25f97c25bf63c94d7039aac8cbf8d12e8a7bce607a0558f19a38ae"; got != want {
		t.Errorf("Binding = %s, want %s as before", got, want)
	}
}

func TestStateAt(t *testing.T) {
	now := time.Now()
	g := Grant{State: StatePending, ExpiresAt: now.Add(time.Minute)}
	if g.StateAt(now) != StatePending || g.StateAt(now.Add(time.Minute)) != StateExpired {
		t.Fatal("pending grant expiry")
	}
	g = Grant{State: StateApproved, RedeemBy: now.Add(time.Minute)}
	if g.StateAt(now) != StateApproved || g.StateAt(now.Add(2*time.Minute)) != StateExpired {
		t.Fatal("approved grant expiry")
	}
}
