package vaulttest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestStartDevAndPostgres(t *testing.T) {
	v := StartDev(t)
	sec, err := v.Client().Auth().Token().LookupSelf()
	if err != nil || sec.Data["id"] != v.Token {
		t.Fatalf("lookup-self: %v %v", sec, err)
	}
	pg := StartPostgres(t)
	conn, err := pgx.Connect(context.Background(), pg.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(context.Background(), "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1: %v %d", err, one)
	}
}

func TestFileServerSurvivesRestart(t *testing.T) {
	v := StartFile(t)
	v.Mount("kv", "kv")
	v.Write("kv/x", map[string]any{"v": "1"})
	v.Stop()
	v.Start()
	v.Unseal()
	sec, err := v.Client().Logical().Read("kv/x")
	if err != nil || sec.Data["v"] != "1" {
		t.Fatalf("after restart: %v %v", sec, err)
	}
}
