// Package config is how valet reads its configuration file: strict YAML
// decoding that names the key of every error, durations written as "90s"
// or 90, defaults that come only from absent keys, and the syntax of the
// names the file gives things.
//
// Each package owns its own section of the file (its type, defaults and a
// Validate naming the full key path); cmd/valet assembles the sections.
// This package sits at the bottom of valet's layers (under leases, the
// lowest domain package) so that every section, the leases one included,
// can use it; it imports no valet package.
//
// Defaults come only from absent keys, never from keys set to their zero
// value: each section type with defaults has a SetDefaults method that sets
// them all, and an UnmarshalYAML that calls it before decoding the section
// (see DecodeOnDefaults), so a key present in the file, even as 0, keeps
// its value and Validate decides whether that value is allowed. Code that
// builds a configuration in Go starts from Defaulted in the same way, then
// sets its own fields.
//
// Adding a key with a default: set the default in its section's
// SetDefaults (a new section type gets SetDefaults, the four-line
// UnmarshalYAML, and a call from its parent's SetDefaults; a type used only
// inline gets SetDefaults alone); a default computed from another key is
// derived in UnmarshalYAML only when ReadPresentKeys says the key is
// absent. Then make Validate accept 0 with a stated meaning or refuse it,
// naming the full key path, and add the key to configKeys in
// cmd/valet/config_test.go (TestConfigKeysAllListed fails until it is
// there) and to the README's configuration block.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// DecodeStrict decodes YAML into v, rejecting unknown keys, trailing
// documents and numbers with a fraction for integer keys. A decoding
// error names the key of each line it cites: "line 7
// (issuers[0].clock_skew): duration "-1s" out of range".
func DecodeStrict(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("config is empty")
		}
		return nameKeys(err, b)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("config must be a single YAML document")
	}
	return refuseFractions(b, v)
}

var errorLine = regexp.MustCompile(`line (\d+):`)

// nameKeys rewrites each "line N:" of a decoding error as "line N (path):",
// where path is the key written on line N (when exactly one is).
func nameKeys(err error, b []byte) error {
	var root yaml.Node
	if yaml.Unmarshal(b, &root) != nil {
		return err
	}
	keys := map[int][]string{} // line -> key paths on it
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				keys[k.Line] = append(keys[k.Line], p)
				walk(n.Content[i+1], p)
			}
		}
	}
	walk(&root, "")
	msg := errorLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		line, _ := strconv.Atoi(errorLine.FindStringSubmatch(m)[1])
		if paths := keys[line]; len(paths) == 1 {
			return fmt.Sprintf("line %d (%s):", line, paths[0])
		}
		return m
	})
	return errors.New(msg)
}

// DecodeOptions strictly decodes a backend's options or a role's params into
// v (a pointer to the backend's own config struct). Keys absent from opts
// leave v's fields as they are, so a backend sets its defaults in v before
// calling DecodeOptions and a key set to 0 keeps 0.
func DecodeOptions(opts map[string]any, v any) error {
	if len(opts) == 0 {
		return nil
	}
	b, err := yaml.Marshal(opts)
	if err != nil {
		return err
	}
	if err := DecodeStrict(b, v); err != nil {
		// b is valet's own rendering of the options: its line numbers
		// would point into the user's file at unrelated lines.
		msg := optionKeyLine.ReplaceAllString(err.Error(), "$1:")
		return errors.New(optionLine.ReplaceAllString(msg, ""))
	}
	return nil
}

// optionKeyLine and optionLine match the "line N (key):" and "line N: "
// that DecodeStrict puts before each message; DecodeOptions keeps only
// the key.
var (
	optionKeyLine = regexp.MustCompile(`line \d+ \(([^)]*)\):`)
	optionLine    = regexp.MustCompile(`line \d+: `)
)

// DecodeOnDefaults is the body of every section's UnmarshalYAML: it sets
// the section's defaults, then decodes the YAML on top of them, so only
// absent keys keep a default. plain must be the section converted to a type
// without the UnmarshalYAML method (type issuer IssuerConfig;
// (*issuer)(ic)), or decoding would recurse.
//
// It uses the decoder's own unmarshal function rather than yaml.Node.Decode,
// which would start a fresh decoder and lose strict decoding (unknown keys
// must stay errors in every nested section). This is the pattern of the
// Prometheus configuration.
func DecodeOnDefaults(setDefaults func(), plain any, unmarshal func(any) error) error {
	setDefaults()
	return unmarshal(plain)
}

// PresentKeys is the tree of keys the mapping being unmarshalled holds, for
// defaults derived from another key (role max_ttl from ttl): they must be
// derived only when their own key is absent.
type PresentKeys map[string]any

// ReadPresentKeys reads the keys of the mapping being unmarshalled (call
// it from UnmarshalYAML with the same unmarshal function).
func ReadPresentKeys(unmarshal func(any) error) (PresentKeys, error) {
	var m map[string]any
	if err := unmarshal(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// Has reports whether the key at path (a nested key for more than one
// name) is present, even with a null value.
func (k PresentKeys) Has(path ...string) bool {
	m := map[string]any(k)
	for i, name := range path {
		v, ok := m[name]
		if !ok {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		if m, ok = v.(map[string]any); !ok {
			return false
		}
	}
	return false
}

// Defaulted returns a T with its defaults set (its SetDefaults method) and
// then edit applied: how Go code builds a list element or section, so that
// what it leaves out has the default a YAML file leaving the key out gets,
// and what it sets, even 0, stays. For example
//
//	config.Defaulted(func(r *broker.Role) { r.Name, r.Backend = "demo", "tokens" })
func Defaulted[T any, P interface {
	*T
	SetDefaults()
}](edit func(P)) T {
	var v T
	P(&v).SetDefaults()
	if edit != nil {
		edit(&v)
	}
	return v
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// NameRule is the syntax of the names the configuration gives issuers,
// backends, roles and webhooks, as error messages state it.
const NameRule = "1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"

// ValidName reports whether s has the syntax of a configured name
// (NameRule). A name that fails it cannot name anything configured, so
// requests check it before the name reaches a log line, a metric label or
// an audit record.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// CheckName checks the name at key path field ("roles[0].name") of one
// entry of a list whose names must be unique: it reports a name that does
// not have the configured names' syntax and a name already in seen, then
// adds name to seen.
func CheckName(field, name string, seen map[string]bool) []error {
	var errs []error
	if !ValidName(name) {
		errs = append(errs, fmt.Errorf("%s %q must be lower-case letters, digits, '.', '_' or '-' (at most 63)", field, name))
	}
	if seen[name] {
		errs = append(errs, fmt.Errorf("%s %q is used twice", field, name))
	}
	seen[name] = true
	return errs
}
