package aws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// placeholder is {{name}} in a session policy or tag value: an agent
// attribute, or agent (the agent id) or role (the valet role).
var placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}`)

// templateVars are the values placeholders take for one mint.
type templateVars struct {
	attrs       map[string]string
	agent, role string
}

func (v templateVars) lookup(name string) (string, bool) {
	switch name {
	case "agent":
		return v.agent, true
	case "role":
		return v.role, true
	}
	s, ok := v.attrs[name]
	return s, ok
}

// template is a text with placeholders, each replaced by a value of at most
// maxAttr characters.
type template struct {
	text    string
	maxAttr int
}

// fill replaces the placeholders. Each value must be at most t.maxAttr
// characters and match allowed; what is wrong is a kindForbidden error
// naming where (the role param) and the attribute.
func (t *template) fill(v templateVars, where string, allowed *regexp.Regexp, rule string) (string, error) {
	var bad error
	out := placeholder.ReplaceAllStringFunc(t.text, func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		val, ok := v.lookup(name)
		switch {
		case bad != nil:
		case !ok:
			bad = clientError(kindForbidden, "the role's %s needs the agent attribute %q, which this agent's attestation does not carry", where, name)
		case len([]rune(val)) > t.maxAttr:
			bad = clientError(kindForbidden, "the role's %s takes attribute %q of at most %d characters (max_attribute_length); this agent's has %d", where, name, t.maxAttr, len([]rune(val)))
		case !allowed.MatchString(val):
			bad = clientError(kindForbidden, "the role's %s takes attribute %q only as %s; this agent's is not", where, name, rule)
		}
		return val
	})
	return out, bad
}

// policyValue is what an attribute may be inside a session policy: no
// character that ends a JSON string, escapes, or widens a match (* ? $).
var policyValue = regexp.MustCompile(`^[A-Za-z0-9_.:/=+@-]*$`)

// policyChars are the characters STS accepts in a policy: \u0020 to \u00FF,
// tab, line feed and carriage return.
var policyChars = regexp.MustCompile("^[\t\n\r\u0020-\u00ff]*$")

// parsePolicyTemplate checks a session policy template: JSON with
// placeholders only inside strings, of characters STS accepts, that cannot
// expand past STS's 2,048 characters however the agent's attributes fill
// it (each at most maxAttr characters). It keeps the policy compacted.
func parsePolicyTemplate(text string, maxAttr int) (*template, error) {
	if !policyChars.MatchString(text) {
		return nil, errors.New("has characters STS does not accept in a policy (only \\u0020 to \\u00FF, tab, line feed and carriage return)")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(text)); err != nil {
		return nil, fmt.Errorf("is not JSON (placeholders may stand only inside JSON strings): %v", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		return nil, errors.New("must be a JSON object (an IAM policy document)")
	}
	if _, ok := doc["Statement"]; !ok {
		return nil, errors.New("is not an IAM policy document: it has no Statement")
	}
	compact := buf.String()
	holes := placeholder.FindAllString(compact, -1)
	fixed := len(compact)
	for _, h := range holes {
		fixed -= len(h)
	}
	if most := fixed + len(holes)*maxAttr; most > MaxSessionPolicyChars {
		return nil, fmt.Errorf("can expand to %d characters (%d without its %d placeholders, each up to max_attribute_length %d), more than STS's %d; shorten it or lower max_attribute_length",
			most, fixed, len(holes), maxAttr, MaxSessionPolicyChars)
	}
	return &template{text: compact, maxAttr: maxAttr}, nil
}

// expand fills the policy for one agent.
func (t *template) expand(v templateVars, where string) (string, error) {
	return t.fill(v, where, policyValue, "letters, digits and _.:/=+@-")
}

// tagChars are the characters of session tag keys and values (STS's
// [\p{L}\p{Z}\p{N}_.:/=+\-@]).
var tagChars = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$`)

// tagTemplate is one session tag with a templated value.
type tagTemplate struct {
	key   string
	value *template
}

// parseTagTemplates checks the session tags: at most 50, keys of 1 to 128
// tag characters, unique without regard to case and not starting with
// aws:, values of tag characters that cannot expand past 256 characters;
// transitive keys must be among them.
func parseTagTemplates(tags map[string]string, transitive []string, maxAttr int) ([]tagTemplate, error) {
	if len(tags) > MaxSessionTags {
		return nil, fmt.Errorf("params.session_tags has %d tags; STS takes at most %d", len(tags), MaxSessionTags)
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seen := map[string]string{}
	var out []tagTemplate
	for _, k := range keys {
		if n := len([]rune(k)); n < 1 || n > MaxTagKeyChars || !tagChars.MatchString(k) {
			return nil, fmt.Errorf("params.session_tags key %q must be 1 to %d letters, digits, spaces and _.:/=+-@", k, MaxTagKeyChars)
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return nil, fmt.Errorf("params.session_tags key %q: the aws: prefix is reserved by AWS", k)
		}
		if other, dup := seen[strings.ToLower(k)]; dup {
			return nil, fmt.Errorf("params.session_tags keys %q and %q differ only in case; AWS tag keys are case-insensitive", other, k)
		}
		seen[strings.ToLower(k)] = k
		v := tags[k]
		if !tagChars.MatchString(placeholder.ReplaceAllString(v, "")) {
			return nil, fmt.Errorf("params.session_tags.%s %q must be letters, digits, spaces and _.:/=+-@ besides its placeholders", k, v)
		}
		holes := placeholder.FindAllString(v, -1)
		fixed := len([]rune(v))
		for _, h := range holes {
			fixed -= len(h)
		}
		if most := fixed + len(holes)*maxAttr; most > MaxTagValueChars {
			return nil, fmt.Errorf("params.session_tags.%s can expand to %d characters, more than STS's %d; shorten it or lower max_attribute_length", k, most, MaxTagValueChars)
		}
		out = append(out, tagTemplate{key: k, value: &template{text: v, maxAttr: maxAttr}})
	}
	if len(transitive) > MaxSessionTags {
		return nil, fmt.Errorf("params.transitive_tag_keys has %d keys; STS takes at most %d", len(transitive), MaxSessionTags)
	}
	for i, k := range transitive {
		if _, ok := tags[k]; !ok {
			return nil, fmt.Errorf("params.transitive_tag_keys[%d] %q is not a key of params.session_tags", i, k)
		}
	}
	return out, nil
}

// expandTag fills a tag value for one agent.
func (t *template) expandTag(v templateVars, key string) (string, error) {
	return t.fill(v, "session tag "+key, tagChars, "letters, digits, spaces and _.:/=+-@")
}
