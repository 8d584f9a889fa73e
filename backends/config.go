package backends

import (
	"errors"
	"fmt"

	"github.com/valet-broker/valet/leases/config"
)

// Config is one entry of the backends section of the configuration file.
// Name and Type are common; every other key belongs to the backend type and
// is decoded strictly by it (config.DecodeOptions), when the Registry
// builds the backend.
type Config struct {
	Name    string         `yaml:"name"`
	Type    string         `yaml:"type"`
	Options map[string]any `yaml:",inline"`
}

// ValidateConfigs checks the backends section and names the full key path
// in each error ("backends[1].name "vault" is used twice").
func ValidateConfigs(list []Config) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	seen := map[string]bool{}
	for i, b := range list {
		f := fmt.Sprintf("backends[%d]", i)
		errs = append(errs, config.CheckName(f+".name", b.Name, seen)...)
		if b.Type == "" {
			add("%s.type must be set", f)
		}
	}
	return errors.Join(errs...)
}
