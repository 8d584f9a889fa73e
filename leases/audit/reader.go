package audit

import "context"

// Reader reads the log: the API's audit endpoints and the console use it.
// An engine's implementation keeps these promises:
//
//   - ListAudit returns the records that f.Match, in sequence order from
//     f.AfterSeq+1, or with f.Newest from the end backwards (below
//     f.BeforeSeq when it is set), at most f.Limit of them (100 when it is
//     not positive, at most 1000). The records are as they were appended:
//     a record is listed only once its transaction has committed.
//   - VerifyAudit walks the whole log as it is stored, with VerifyChain, in
//     one consistent read: a broken chain is a VerifyResult with OK false,
//     not an error; an error means the log could not be read.
type Reader interface {
	ListAudit(ctx context.Context, f Filter) ([]Record, error)
	VerifyAudit(ctx context.Context) (VerifyResult, error)
}
