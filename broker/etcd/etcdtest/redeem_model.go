package etcdtest

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// RedeemInput is one operation of a grant redeem history: a redeem of
// Grant, or a read of it.
type RedeemInput struct {
	Grant string
	Read  bool // a read of the grant instead of a redeem
}

// RedeemOutput is what the client saw of the operation. Exactly one of
// Won, Refused, Failed and Unknown is set for a redeem; a read sets
// Redeemed to what it read.
type RedeemOutput struct {
	Won      bool // the redeem committed
	Refused  bool // the grant was redeemed already (someone else won)
	Failed   bool // refused before anything was written
	Unknown  bool // no answer (a timeout, a dropped connection, a 5xx): it may or may not have committed
	Redeemed bool // read: the grant reads redeemed
}

// Grant states of RedeemModel.
const (
	grantApproved = iota
	grantRedeemed
	// grantHeld: a redeem whose outcome the client did not learn took
	// the grant and may still give it back (broker.RedeemGrant gives a
	// grant back when the mint after the redeem fails).
	grantHeld
)

// RedeemModel is the sequential specification of a grant's redeem: an
// approved grant is redeemed by exactly one redeem, after which every
// redeem is refused and every read sees it redeemed. A failed redeem
// wrote nothing; an unknown one may have won, or may have held the
// grant for a while and given it back (its mint failed). Histories are
// partitioned by grant. Check with porcupine.CheckOperations; ops with
// an unknown outcome should return at the end of the history (they may
// take effect at any later time).
var RedeemModel = (&porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range h {
			g := op.Input.(RedeemInput).Grant
			if _, ok := by[g]; !ok {
				order = append(order, g)
			}
			by[g] = append(by[g], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, g := range order {
			out = append(out, by[g])
		}
		return out
	},
	Init: func() []any { return []any{grantApproved} },
	Step: func(state, input, output any) []any {
		in, out := input.(RedeemInput), output.(RedeemOutput)
		st := state.(int)
		if st != grantHeld {
			return redeemStep(st == grantRedeemed, in, out)
		}
		// Held: the op sees the grant redeemed (and it stays held), or
		// the holder gave it back first.
		var next []any
		for _, n := range redeemStep(true, in, out) {
			if n == grantRedeemed {
				n = grantHeld
			}
			next = append(next, n)
		}
		return append(next, redeemStep(false, in, out)...)
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%+v -> %+v", input, output)
	},
}).ToModel()

// redeemStep is the step from an approved (or redeemed) grant.
func redeemStep(redeemed bool, in RedeemInput, out RedeemOutput) []any {
	st := grantApproved
	if redeemed {
		st = grantRedeemed
	}
	switch {
	case in.Read:
		if out.Redeemed == redeemed {
			return []any{st}
		}
	case out.Failed:
		return []any{st}
	case out.Unknown:
		if redeemed {
			return []any{grantRedeemed}
		}
		return []any{grantApproved, grantRedeemed, grantHeld}
	case out.Won:
		if !redeemed {
			return []any{grantRedeemed}
		}
	default: // refused
		if redeemed {
			return []any{grantRedeemed}
		}
	}
	return nil
}
