package bolt

import (
	"testing"

	"github.com/valet-broker/valet/broker/storetest"
	"github.com/valet-broker/valet/leases/clock"
)

// TestStoragePromises runs the suite every engine runs; one process has
// one handle, so both of the suite's handles are the same store.
func TestStoragePromises(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Engine, storetest.Engine) {
		s := MustOpenStore(t)
		e := storetest.Engine{Store: s, Grants: s.Grants(), Replay: func(clk clock.Clock) storetest.ReplayCache { return s.ReplayCache(clk) }}
		return e, e
	})
}
