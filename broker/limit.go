package broker

import (
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/valet-broker/valet/leases/clock"
)

// agentLimiter is a token bucket per agent id. Buckets of agents not seen
// for a while are dropped so the map stays bounded by active agents.
type agentLimiter struct {
	limit rate.Limit
	burst int
	clock clock.Clock

	mu        sync.Mutex
	buckets   map[string]*agentBucket
	lastSweep time.Time
}

type agentBucket struct {
	l    *rate.Limiter
	seen time.Time
}

// newAgentLimiter returns a limiter allowing each agent perSecond requests
// per second with bursts of burst (limits.agent_rate and agent_burst). An
// infinite rate sets no limit (the limiter is nil and allows everything).
// It refuses a rate that is not positive and a burst below 1.
func newAgentLimiter(perSecond float64, burst int, clk clock.Clock) (*agentLimiter, error) {
	if !(perSecond > 0) {
		return nil, fmt.Errorf("limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is %g", perSecond)
	}
	if burst < 1 {
		return nil, fmt.Errorf("limits.agent_burst must be at least 1; it is %d", burst)
	}
	if math.IsInf(perSecond, 1) {
		return nil, nil
	}
	return &agentLimiter{limit: rate.Limit(perSecond), burst: burst, clock: clk, buckets: map[string]*agentBucket{}}, nil
}

func (a *agentLimiter) allow(agent string) bool {
	if a == nil {
		return true
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if now.Sub(a.lastSweep) > time.Minute {
		for k, b := range a.buckets {
			if now.Sub(b.seen) > 10*time.Minute {
				delete(a.buckets, k)
			}
		}
		a.lastSweep = now
	}
	b, ok := a.buckets[agent]
	if !ok {
		b = &agentBucket{l: rate.NewLimiter(a.limit, a.burst)}
		a.buckets[agent] = b
	}
	b.seen = now
	return b.l.AllowN(now, 1)
}
