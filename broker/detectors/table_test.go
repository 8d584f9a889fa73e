package detectors

import (
	"fmt"
	"sync"
	"testing"
)

// TestTableEvictsLeastRecentlyUsed: a full table forgets the key used
// least recently; get and put mark a key used, lookup does not.
func TestTableEvictsLeastRecentlyUsed(t *testing.T) {
	tb := newTable[int](3)
	for i, k := range []string{"a", "b", "c"} {
		tb.put(k, i)
	}
	if _, fresh, mu := tb.get("a"); fresh {
		t.Fatal("a was forgotten")
	} else {
		mu.Unlock()
	}
	tb.lookup("b") // not a use
	tb.put("d", 3) // evicts b, the least recently used
	for k, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := tb.lookup(k); ok != want {
			t.Errorf("%s held: %v, want %v", k, ok, want)
		}
	}
	if v, fresh, mu := tb.get("b"); !fresh || *v != 0 {
		t.Fatalf("b came back with %d, fresh %v; want a fresh zero state", *v, fresh)
	} else {
		mu.Unlock()
	}
	if tb.len() != 3 {
		t.Fatalf("%d keys, want 3", tb.len())
	}
}

// TestTableBounded: a sharded table under concurrent use never holds more
// than its bound.
func TestTableBounded(t *testing.T) {
	tb := newTable[int](5000)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				v, _, mu := tb.get(fmt.Sprintf("%d-%d", w, i))
				*v++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := tb.len(); n > 5000 || n < 4000 {
		t.Fatalf("%d keys, want at most 5000 (and most of them)", n)
	}
}
