package broker

// listLimit is the page size of a listing: the filter's limit, 100 when
// unset, at most 1000 (what the stores apply).
func listLimit(limit int) int {
	if limit <= 0 {
		limit = 100
	}
	return min(limit, 1000)
}

// listAsShown lists, newest first, up to limit items whose state as shown
// to clients (stateAt, computed at one moment: see leases.Lease.StateAt and
// grants.Grant.StateAt) is want, or all items when want is "", from a store
// that filters on the stored state. stored are the stored states an item
// shown as want can have (an expired lease is stored expired, or active
// past its expiry); list reads one page of one of them (at most limit
// items, newest first, ids below before). The stored states' pages are
// merged by id, which is time-ordered, starting below before; the result is
// short only when nothing more matches.
func listAsShown[T any, S ~string](want S, stored []S, limit int, before string,
	list func(st S, before string, limit int) ([]T, error), id func(T) string, stateAt func(T) S) ([]T, error) {
	type stream struct {
		state  S
		before string
		buf    []T // items shown as want, not yet taken, newest first
		done   bool
	}
	streams := make([]*stream, len(stored))
	for i, st := range stored {
		streams[i] = &stream{state: st, before: before}
	}
	// fill reads pages of s until it holds a wanted item or has no more.
	fill := func(s *stream) error {
		for len(s.buf) == 0 && !s.done {
			page, err := list(s.state, s.before, limit)
			if err != nil {
				return err
			}
			s.done = len(page) < limit
			if len(page) > 0 {
				s.before = id(page[len(page)-1])
			}
			for _, it := range page {
				if want == "" || stateAt(it) == want {
					s.buf = append(s.buf, it)
				}
			}
		}
		return nil
	}
	var out []T
	seen := map[string]bool{} // an item that changed state between pages is listed once
	for len(out) < limit {
		var next *stream
		for _, s := range streams {
			if err := fill(s); err != nil {
				return nil, err
			}
			if len(s.buf) > 0 && (next == nil || id(s.buf[0]) > id(next.buf[0])) {
				next = s
			}
		}
		if next == nil {
			break
		}
		it := next.buf[0]
		next.buf = next.buf[1:]
		if !seen[id(it)] {
			seen[id(it)] = true
			out = append(out, it)
		}
	}
	return out, nil
}
