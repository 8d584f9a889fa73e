package etcd

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"time"
)

// Key layout under the prefix P (every index is written by the function
// that writes its record, in the same transaction):
//
//	P l/<id>                      lease (JSON)
//	P li/e/<time>/<id>            active leases by expiry
//	P li/a/<value>/<id>           leases by agent
//	P li/g/<value>/<id>           leases by lineage id
//	P li/s/<state>/<id>           leases by state
//	P li/q/<time>/<id>            revocation queue by next attempt -> lane
//	P li/x/<time>/<id>            terminal leases by end (retention)
//	P a/h                         audit head (audit.Head.Bytes)
//	P a/r/<seq>                   audit record (its stored bytes)
//	P g/<id>                      grant (JSON)
//	P gi/s/<state>/<id>, gi/a/<value>/<id>, gi/r/<id>   grant indexes
//	P gi/x/<time>/<id>            ended grants by end (retention)
//	P ag/<id>                     agent record (JSON)
//	P gate/<id>                   an agent's gate (JSON), written only when it changes
//	P agi/seen/<time>/<id>, agi/q/<id>, agi/rel/<time>/<id>   agent indexes
//	P s/<id>                      signal (JSON)
//	P si/a/<value>/<id>, si/sub/<value>/<id>, si/p/<id>       signal indexes
//	P j/<name>                    job state (JSON)
//	P r/k/<key>, r/e/<time>/<key> replay cache and its expiry index
//	P w/<replica>                 a replica's marker (the last transaction it wrote)
//	P leader/                     the election of the leader
//
// <time> is 16 hex digits of Unix nanoseconds (seconds for the replay
// cache), so keys sort in time order. <value> is a value from outside
// valet (an agent id, a lineage id): 8 hex digits of its length, then the
// value, so the keys of one value never start with those of another.

// tkey is a time as 16 hex digits of Unix nanoseconds (0 before 1970).
func tkey(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(max(t.UnixNano(), 0)))
	return hex.EncodeToString(b[:])
}

// parseTkey reads tkey's form.
func parseTkey(s string) (time.Time, bool) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b))), true
}

// vkey is a value of outside origin in an index key: its length, then it.
func vkey(v string) string {
	return strconv.FormatUint(uint64(len(v))+1<<32, 16)[1:] + v + "/"
}

// prefixEnd is the end of the range of keys that start with p.
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}
