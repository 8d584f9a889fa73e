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

// RedeemModel is the sequential specification of a grant's redeem: an
// approved grant is redeemed by exactly one redeem, after which every
// redeem is refused and every read sees it redeemed. A failed redeem
// wrote nothing; an unknown one may have won. Histories are partitioned
// by grant. Check with porcupine.CheckOperations; ops with an unknown
// outcome should return at the end of the history (they may take effect
// at any later time).
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
	Init: func() []any { return []any{false} },
	Step: func(state, input, output any) []any {
		redeemed := state.(bool)
		in, out := input.(RedeemInput), output.(RedeemOutput)
		ok := func(cond bool, next bool) []any {
			if cond {
				return []any{next}
			}
			return nil
		}
		switch {
		case in.Read:
			return ok(out.Redeemed == redeemed, redeemed)
		case out.Failed:
			return []any{redeemed}
		case out.Unknown:
			if redeemed {
				return []any{true}
			}
			return []any{false, true}
		case out.Won:
			return ok(!redeemed, true)
		default: // refused
			return ok(redeemed, true)
		}
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%+v -> %+v", input, output)
	},
}).ToModel()
