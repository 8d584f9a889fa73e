package detectors

import (
	"hash/maphash"
	"sync"
)

// table is a detector's state per key (an agent, a lease, a lineage) in
// memory, for at most max keys: adding a key to a full table evicts the
// key used least recently. It is safe for concurrent use; large tables
// are split in shards, each with its own lock and its share of max, so
// that concurrent flows for different agents rarely wait for each other.
type table[V any] struct {
	seed   maphash.Seed
	shards []shard[V]
}

// shardedAbove is the size from which a table is split in tableShards
// shards; a smaller one has one shard, so that it holds exactly max keys.
const (
	shardedAbove = 1024
	tableShards  = 16
)

type shard[V any] struct {
	mu   sync.Mutex
	m    map[string]*entry[V]
	root entry[V] // root.next is the most recently used, root.prev the least
	max  int
}

type entry[V any] struct {
	key        string
	v          V
	prev, next *entry[V]
}

// newTable returns a table of at most max keys (max ≥ 1).
func newTable[V any](max int) *table[V] {
	n := 1
	if max > shardedAbove {
		n = tableShards
	}
	t := &table[V]{seed: maphash.MakeSeed(), shards: make([]shard[V], n)}
	for i := range t.shards {
		s := &t.shards[i]
		s.m = map[string]*entry[V]{}
		s.root.next, s.root.prev = &s.root, &s.root
		s.max = max / n
	}
	return t
}

func (t *table[V]) shard(key string) *shard[V] {
	if len(t.shards) == 1 {
		return &t.shards[0]
	}
	return &t.shards[maphash.String(t.seed, key)%uint64(len(t.shards))]
}

// get returns key's state, added (zero, fresh true) if the table did not
// hold it, and marks it used. The state's shard stays locked until the
// caller unlocks mu; the state must not be kept after that.
func (t *table[V]) get(key string) (v *V, fresh bool, mu *sync.Mutex) {
	s := t.shard(key)
	s.mu.Lock()
	e, ok := s.m[key]
	if ok {
		s.unlink(e)
	} else {
		if len(s.m) >= s.max {
			old := s.root.prev
			s.unlink(old)
			delete(s.m, old.key)
		}
		e = &entry[V]{key: key}
		s.m[key] = e
	}
	s.pushFront(e)
	return &e.v, !ok, &s.mu
}

// lookup returns a copy of key's state and whether the table holds it,
// without adding it or marking it used.
func (t *table[V]) lookup(key string) (V, bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok {
		return e.v, true
	}
	var zero V
	return zero, false
}

// put sets key's state and marks it used.
func (t *table[V]) put(key string, v V) {
	p, _, mu := t.get(key)
	*p = v
	mu.Unlock()
}

// max returns how many keys the table holds at most.
func (t *table[V]) max() int { return t.shards[0].max * len(t.shards) }

// len returns how many keys the table holds.
func (t *table[V]) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func (s *shard[V]) unlink(e *entry[V]) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (s *shard[V]) pushFront(e *entry[V]) {
	e.prev, e.next = &s.root, s.root.next
	s.root.next.prev = e
	s.root.next = e
}
