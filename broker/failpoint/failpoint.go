// Package failpoint lets valet's crash tests kill the process at a named
// point of a flow, for example between a backend's mint and the lease
// commit. It does nothing unless valet is built with -tags
// valet_failpoints; such a build kills itself (SIGKILL, so no shutdown code
// runs) when it reaches a point named in $VALET_FAILPOINTS
// (comma-separated).
package failpoint

// Points valet defines.
const (
	// MintAfterBackend is reached when a backend has issued a credential
	// and its lease is not yet recorded as active.
	MintAfterBackend = "mint.after-backend"
	// ContainBetweenBatches is reached when a signal's mass revocation
	// has ended one batch of leases and more may follow.
	ContainBetweenBatches = "contain.between-batches"
	// KEKBetweenOwners is reached when the kek-rotation job has
	// re-wrapped one owner's sealed values (a backend's files, the
	// checkpoint key) and is about to re-wrap the next one's.
	KEKBetweenOwners = "kek.between-owners"
)
