package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
)

const formContentType = "application/x-www-form-urlencoded"

// parseForm reads the application/x-www-form-urlencoded body of an OAuth
// endpoint (RFC 6749 appendix B) with the rules RFC 6749 section 3.1 sets
// for every such endpoint: parameters come in the body, never the URL
// query (where proxies log them); a parameter sent without a value counts
// as omitted; and no parameter may be given more than once, except those
// named in repeatable (RFC 8693's resource and audience). The body is read
// up to maxBytes. Every failure is an invalid_request that describes the
// form body; an over-long body is answered with 413.
func parseForm(r *http.Request, maxBytes int64, repeatable ...string) (url.Values, *oauthError) {
	if err := requireContentType(r, formContentType); err != nil {
		return nil, invalidRequest("the body must be a form: Content-Type must be " + formContentType)
	}
	if r.URL.RawQuery != "" {
		return nil, invalidRequest("send the parameters in the form body, not in the URL query")
	}
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &oauthError{Error: "invalid_request", Description: fmt.Sprintf("the form body is over the limit of %d bytes", mbe.Limit), status: http.StatusRequestEntityTooLarge}
		}
		return nil, invalidRequest("the form body could not be read")
	}
	parsed, err := url.ParseQuery(string(b))
	if err != nil {
		return nil, invalidRequest(fmt.Sprintf("malformed form body (%s): %v", formContentType, err))
	}
	form := url.Values{}
	for name, values := range parsed {
		for _, v := range values {
			if v != "" {
				form[name] = append(form[name], v)
			}
		}
	}
	var repeated []string
	for name, values := range form {
		if len(values) > 1 && !slices.Contains(repeatable, name) {
			repeated = append(repeated, name)
		}
	}
	if len(repeated) > 0 {
		sort.Strings(repeated)
		name := repeated[0]
		if len(name) > 64 {
			name = name[:64] + "..."
		}
		return nil, invalidRequest(fmt.Sprintf("parameter %q is given more than once; each parameter may appear only once (RFC 6749 section 3.1)", name))
	}
	return form, nil
}
