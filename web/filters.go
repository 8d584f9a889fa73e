package web

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
)

// listFilters reads the filters of a list page from its query. A filter
// given twice, or whose value can match nothing valet holds (an agent id
// of another shape, a name of another syntax than configured names, a
// state that is not one, a cursor that is not an id), is dropped, and the
// page says so: the form must never show "any" above a list that was in
// fact filtered, nor a filtered list under a filter that was ignored.
type listFilters struct {
	q        url.Values
	problems []string
}

func readFilters(r *http.Request) *listFilters {
	q, err := url.ParseQuery(r.URL.RawQuery)
	f := &listFilters{q: q}
	if err != nil {
		f.q = url.Values{}
		f.problems = append(f.problems, "The page address has a malformed query; its filters are ignored.")
	}
	return f
}

// has reports whether the query names the filter at all.
func (f *listFilters) has(name string) bool {
	_, ok := f.q[name]
	return ok
}

// value returns the filter's value, trimmed; "" when it is absent or was
// dropped.
func (f *listFilters) value(name, label string) string {
	vs := f.q[name]
	switch {
	case len(vs) == 0:
		return ""
	case len(vs) > 1:
		return f.drop(label, "is given %d times", len(vs))
	case !utf8.ValidString(vs[0]):
		return f.drop(label, "is not valid UTF-8")
	}
	return strings.TrimSpace(vs[0])
}

// drop records why a filter is ignored and returns "".
func (f *listFilters) drop(label, why string, args ...any) string {
	f.problems = append(f.problems, fmt.Sprintf("The %s filter "+why+"; it is ignored.", append([]any{label}, args...)...))
	return ""
}

// agent reads an agent id filter (broker.ValidAgentID).
func (f *listFilters) agent(name string) string {
	v := f.value(name, "agent")
	if v != "" && !broker.ValidAgentID(v) {
		return f.drop("agent", "%q is not an agent id (%s)", v, broker.AgentIDRule)
	}
	return v
}

// name reads a filter that names a configured thing (a role, a backend).
// A name of the right syntax that is not among options (a role removed
// from the configuration since its leases were made) is kept and added to
// options, so the form's list shows what the page is filtered by.
func (f *listFilters) name(name, label string, options *[]string) string {
	v := f.value(name, label)
	switch {
	case v == "":
		return ""
	case !broker.ValidName(v):
		return f.drop(label, "%q is not a %s name (%s)", v, label, broker.NameRule)
	case !slices.Contains(*options, v):
		*options = append(*options, v)
	}
	return v
}

// oneOf reads an enumerated filter; values are exact.
func (f *listFilters) oneOf(name, label string, valid []string) string {
	v := f.value(name, label)
	if v != "" && !slices.Contains(valid, v) {
		return f.drop(label, "%q is not one of %s", v, strings.Join(valid, ", "))
	}
	return v
}

// cursor reads a paging cursor: a lease or grant id.
func (f *listFilters) cursor(name string) string {
	v := f.value(name, "page")
	if v != "" && !leases.ValidID(v) {
		return f.drop("page", "cursor %q is not an id", v)
	}
	return v
}

// flashes are the page's messages about dropped filters.
func (f *listFilters) flashes() []flash {
	var out []flash
	for _, p := range f.problems {
		out = append(out, flash{"error", p})
	}
	return out
}
