//go:build !valet_testbackends

package builtin

import "github.com/valet-broker/valet/backends"

// addTestBackends adds nothing to a production build.
func addTestBackends(backends.Registry) {}
