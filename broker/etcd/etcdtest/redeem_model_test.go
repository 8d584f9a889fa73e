package etcdtest

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

func TestRedeemModel(t *testing.T) {
	const end = 1000 // where ops with an unknown outcome return
	op := func(client int, call, ret int64, read bool, out RedeemOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: RedeemInput{Grant: "g", Read: read}, Call: call, Return: ret, Output: out}
	}
	won, refused, failed, unknown := RedeemOutput{Won: true}, RedeemOutput{Refused: true}, RedeemOutput{Failed: true}, RedeemOutput{Unknown: true}
	readRedeemed, readApproved := RedeemOutput{Redeemed: true}, RedeemOutput{}
	for _, tc := range []struct {
		name    string
		history []porcupine.Operation
		ok      bool
	}{
		{"one win, then refusals", []porcupine.Operation{op(0, 0, 10, false, won), op(1, 20, 30, false, refused), op(2, 40, 50, true, readRedeemed)}, true},
		{"two wins", []porcupine.Operation{op(0, 0, 10, false, won), op(1, 20, 30, false, won)}, false},
		{"two overlapping wins", []porcupine.Operation{op(0, 0, 30, false, won), op(1, 10, 40, false, won)}, false},
		{"a refusal before anyone could win", []porcupine.Operation{op(0, 0, 10, false, refused), op(1, 20, 30, false, won)}, false},
		{"a read misses a win that returned", []porcupine.Operation{op(0, 0, 10, false, won), op(1, 20, 30, true, readApproved)}, false},
		{"a failed redeem wrote nothing", []porcupine.Operation{op(0, 0, 10, false, failed), op(1, 20, 30, true, readApproved), op(1, 40, 50, false, won)}, true},
		{"an unknown redeem won", []porcupine.Operation{op(0, 0, end, false, unknown), op(1, 20, 30, false, refused), op(1, 40, 50, true, readRedeemed)}, true},
		{"an unknown redeem gave the grant back", []porcupine.Operation{
			op(2, 0, 5, true, readApproved), op(0, 1, end, false, unknown), op(1, 3, 30, false, refused), op(0, 200, 210, false, won)}, true},
		{"no unknown redeem to explain a refusal", []porcupine.Operation{
			op(2, 0, 5, true, readApproved), op(0, 1, 20, false, failed), op(1, 3, 30, false, refused), op(0, 200, 210, false, won)}, false},
		{"an unknown redeem and a win cannot both leave it approved", []porcupine.Operation{
			op(0, 0, end, false, unknown), op(1, 10, 20, false, won), op(2, 30, 40, true, readApproved)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(RedeemModel, tc.history); got != tc.ok {
				t.Fatalf("linearizable = %v, want %v", got, tc.ok)
			}
		})
	}
}
