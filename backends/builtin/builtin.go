// Package builtin lists the backends compiled into valet. It is the one
// place where backend types are registered: adding a backend means adding a
// line here.
package builtin

import (
	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/aws"
	"github.com/valet-broker/valet/backends/gcp"
	"github.com/valet-broker/valet/backends/github"
	"github.com/valet-broker/valet/backends/jwt"
	"github.com/valet-broker/valet/backends/vault"
)

// Registry returns the built-in backend types.
func Registry() backends.Registry {
	r := backends.Registry{
		aws.Type:    aws.New,
		gcp.Type:    gcp.New,
		github.Type: github.New,
		jwt.Type:    jwt.New,
		vault.Type:  vault.New,
	}
	addTestBackends(r)
	return r
}
