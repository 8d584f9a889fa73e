//go:build valet_testbackends

package builtin

import (
	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/backendtest"
)

// addTestBackends registers the backends valet's own end-to-end tests use;
// only binaries built with -tags valet_testbackends have them.
func addTestBackends(r backends.Registry) {
	r[backendtest.LedgerType] = backendtest.NewLedger
}
