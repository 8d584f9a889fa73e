package broker

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/valet-broker/valet/broker/clock"
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

// newAgentLimiter returns a limiter; a negative rate disables it.
func newAgentLimiter(perSecond float64, burst int, clk clock.Clock) *agentLimiter {
	if perSecond < 0 {
		return nil
	}
	return &agentLimiter{limit: rate.Limit(perSecond), burst: burst, clock: clk, buckets: map[string]*agentBucket{}}
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
