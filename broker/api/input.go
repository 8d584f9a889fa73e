package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/strictjson"
	"github.com/valet-broker/valet/leases"
)

// This file holds how the API reads what clients send: JSON bodies, form
// bodies and query strings, and the checks on names and ids that come in
// them. Every refusal is EINVALID (or ETOOLARGE) with a message that says
// exactly what to fix, and none carries a refused value unquoted.

// Validator is implemented by request bodies.
type Validator interface {
	Validate() error
}

// decodeJSON decodes the request's body, one JSON object, into v by the
// rules of package strictjson (no unknown, case-variant or duplicate keys,
// valid UTF-8, nothing after the object) and validates it. The content
// type must be application/json; the body is already bounded by
// withLimits, and a body over the limit is ETOOLARGE.
func decodeJSON(r *http.Request, v Validator) error {
	if err := requireContentType(r, "application/json"); err != nil {
		return err
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return bodyError(err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return broker.Errorf(broker.EINVALID, "the request body is empty; send a JSON object")
	}
	if err := strictjson.Unmarshal(b, v); err != nil {
		var je *strictjson.Error
		if errors.As(err, &je) {
			return broker.Errorf(broker.EINVALID, "%s", je.Message)
		}
		return broker.Wrap(broker.EINTERNAL, err, "decode the request body")
	}
	return v.Validate()
}

func requireContentType(r *http.Request, want string) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != want {
		return broker.Errorf(broker.EINVALID, "Content-Type must be %s", want)
	}
	return nil
}

// bodyError is the error for a body that could not be read or parsed as a
// form: ETOOLARGE over the size limit, else EINVALID. The read error
// itself (which names the server's address) is kept as the cause, for the
// log, and not shown.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return broker.Errorf(broker.ETOOLARGE, "request body is over the limit of %d bytes", mbe.Limit)
	}
	return broker.Wrap(broker.EINVALID, err, "the request body cannot be read: the connection failed or ended before the whole body arrived; send the request again")
}

// params are the query parameters of a request, each given at most once.
type params map[string]string

// readQuery parses the request's query string for an endpoint that takes
// the parameters names. A parameter given twice, one the endpoint does not
// take, a value that is not UTF-8 and a malformed query string are
// EINVALID: a typo or a second value must not be ignored in silence.
func readQuery(r *http.Request, names ...string) (params, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, broker.Errorf(broker.EINVALID, "malformed query string: %v", err)
	}
	return singleValues("query parameter", q, names)
}

// singleValues checks that vs holds only the names given, each once, with UTF-8
// values; what names the kind of parameter in messages.
func singleValues(what string, vs url.Values, names []string) (params, error) {
	out := params{}
	for _, k := range slices.Sorted(maps.Keys(vs)) {
		v := vs[k]
		switch {
		case !slices.Contains(names, k):
			return nil, broker.Errorf(broker.EINVALID, "unknown %s %q; this endpoint takes %s", what, k, strings.Join(names, ", "))
		case len(v) > 1:
			return nil, broker.Errorf(broker.EINVALID, "%s %q is given %d times; give it at most once", what, k, len(v))
		case !utf8.ValidString(v[0]):
			return nil, broker.Errorf(broker.EINVALID, "%s %q holds invalid UTF-8", what, k)
		}
		out[k] = v[0]
	}
	return out, nil
}

// oneOf checks an enumerated value. Values are exact: one that differs
// from a valid one only in letter case is refused, with the valid one named.
func oneOf(name, value string, valid ...string) error {
	if value == "" || slices.Contains(valid, value) {
		return nil
	}
	msg := fmt.Sprintf("%s %q is not one of %s", name, value, strings.Join(valid, ", "))
	if i := slices.IndexFunc(valid, func(v string) bool { return strings.EqualFold(v, value) }); i >= 0 {
		msg += fmt.Sprintf("; values are case-sensitive: did you mean %q?", valid[i])
	}
	return broker.Errorf(broker.EINVALID, "%s", msg)
}

// limit reads the limit parameter of list endpoints: an integer from 1 to
// 1000, or def when absent or empty.
func (p params) limit(def int) (int, error) {
	v := p["limit"]
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, broker.Errorf(broker.EINVALID, "limit must be an integer from 1 to 1000")
	}
	return n, nil
}

// validateName checks a name that must be one of the configured names
// (a role, a backend): a value of another syntax can name nothing, and is
// refused before it reaches a log line, a metric or an audit record. The
// message states the rule and not the value.
func validateName(field, name string) error {
	if name == "" {
		return broker.Errorf(broker.EINVALID, "%s is required", field)
	}
	if !broker.ValidName(name) {
		return broker.Errorf(broker.EINVALID, "%s must be %s", field, broker.NameRule)
	}
	return nil
}

// validateAgentID checks an agent id given to select leases, grants or
// audit records (broker.ValidAgentID).
func validateAgentID(field, id string) error {
	if !broker.ValidAgentID(id) {
		return broker.Errorf(broker.EINVALID, "%s must be %s, at most %d bytes", field, broker.AgentIDRule, broker.MaxAgentIDBytes)
	}
	return nil
}

// validateLineage checks a lineage id (leases.Lineage.IDs).
func validateLineage(field, id string) error {
	if !broker.ValidLineage(id) {
		return broker.Errorf(broker.EINVALID, "%s must %s", field, broker.LineageRule)
	}
	return nil
}

// validateID checks a paging cursor or an id filter: an id as
// leases.NewID makes them (lease and grant ids alike).
func validateID(field, what, id string) error {
	if id != "" && !leases.ValidID(id) {
		return broker.Errorf(broker.EINVALID, "%s must be a %s id", field, what)
	}
	return nil
}
