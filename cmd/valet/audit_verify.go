package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/leases/audit"
)

// auditSource is where `valet audit verify` reads the log: the data
// directory (server stopped) or the running server.
type auditSource struct {
	dataDir string
	cf      *clientFlags
}

// readLocation reads a file, or an http(s) URL.
func readLocation(ctx context.Context, loc string) ([]byte, error) {
	if u, err := url.Parse(loc); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
		if err != nil {
			return nil, err
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return nil, fmt.Errorf("%s answered %s", loc, resp.Status)
		}
		return io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	}
	return os.ReadFile(loc)
}

// trustedKey reads the checkpoint public key: --key, else the data
// directory's key file, else the server's published key (with a warning:
// a verifier should pin the key it trusts).
func (src auditSource) trustedKey(ctx context.Context, keyLoc string, warn io.Writer) (ed25519.PublicKey, error) {
	switch {
	case keyLoc != "":
		b, err := readLocation(ctx, keyLoc)
		if err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
		keys, err := jobdefs.ParseCheckpointJWKs(b)
		if err != nil {
			return nil, fmt.Errorf("--key %s: %w", keyLoc, err)
		}
		return keys[0], nil
	case src.dataDir != "":
		pub, err := jobdefs.ReadCheckpointPublicKey(src.dataDir)
		if err != nil {
			return nil, fmt.Errorf("the checkpoint key of %s: %w (give it with --key)", src.dataDir, err)
		}
		fmt.Fprintln(warn, "note: the checkpoint key was read from the data directory being verified; pin the key you trust with --key")
		return pub, nil
	default:
		c, err := src.cf.client()
		if err != nil {
			return nil, err
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/.well-known/valet-audit-keys.json", "", nil, &raw); err != nil {
			return nil, err
		}
		keys, err := jobdefs.ParseCheckpointJWKs(raw)
		if err != nil {
			return nil, fmt.Errorf("the server's checkpoint key: %w", err)
		}
		fmt.Fprintln(warn, "note: the checkpoint key was fetched from the server being verified; pin the key you trust with --key")
		return keys[0], nil
	}
}

// storedCheckpoints reads the checkpoints the log itself holds
// (audit.checkpoint records).
func (src auditSource) storedCheckpoints(ctx context.Context) ([]audit.Checkpoint, error) {
	var out []audit.Checkpoint
	err := src.eachRecord(ctx, audit.KindCheckpoint, func(r audit.Record) error {
		cp, err := jobdefs.CheckpointFromRecord(r)
		if err != nil {
			return err
		}
		out = append(out, cp)
		return nil
	})
	return out, err
}

// eachRecord calls fn with every record of kind ("" for all), in order.
func (src auditSource) eachRecord(ctx context.Context, kind string, fn func(audit.Record) error) error {
	var after uint64
	for {
		var recs []audit.Record
		if src.dataDir != "" {
			s, err := bolt.Open(filepath.Join(src.dataDir, "valet.db"), bolt.Options{ReadOnly: true})
			if err != nil {
				return err
			}
			recs, err = s.ListAudit(ctx, audit.Filter{AfterSeq: after, Kind: kind, Limit: 1000})
			s.Close()
			if err != nil {
				return err
			}
		} else {
			q := url.Values{"after": {fmt.Sprint(after)}, "limit": {"1000"}}
			if kind != "" {
				q.Set("kind", kind)
			}
			raw, err := src.cf.operatorCall(ctx, "GET", "/v1/audit?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			var res struct {
				Records []audit.Record `json:"records"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			recs = res.Records
		}
		if len(recs) == 0 {
			return nil
		}
		for _, r := range recs {
			if err := fn(r); err != nil {
				return err
			}
		}
		after = recs[len(recs)-1].Seq
	}
}

// verifyWithCheckpoints checks the log against checkpoints: offline, the
// store walks its own bytes; through the server, the records it lists
// are chained again here, so the server's own verdict is not trusted.
func (src auditSource) verifyWithCheckpoints(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	if src.dataDir != "" {
		s, err := bolt.Open(filepath.Join(src.dataDir, "valet.db"), bolt.Options{ReadOnly: true})
		if err != nil {
			return audit.VerifyResult{}, err
		}
		defer s.Close()
		return s.VerifyAuditCheckpoints(ctx, cps)
	}
	raw, err := src.cf.operatorCall(ctx, "GET", "/v1/audit/verify", nil)
	if err != nil {
		return audit.VerifyResult{}, err
	}
	var server audit.VerifyResult
	if err := json.Unmarshal(raw, &server); err != nil {
		return audit.VerifyResult{}, err
	}
	if !server.OK {
		return server, nil
	}
	var stored [][]byte
	if err := src.eachRecord(ctx, "", func(r audit.Record) error {
		b, err := json.Marshal(r) // the canonical encoding the hash covers
		stored = append(stored, b)
		return err
	}); err != nil {
		return audit.VerifyResult{}, err
	}
	head := audit.Head{Seq: server.HeadSeq}
	if h, err := hex.DecodeString(server.HeadHash); err == nil && len(h) == len(head.Hash) {
		copy(head.Hash[:], h)
	} else if server.HeadSeq > 0 {
		return audit.VerifyResult{}, errors.New("the server reported a malformed head hash")
	}
	i := 0
	return audit.VerifyChainCheckpoints(head.Bytes(), func() ([]byte, []byte, bool) {
		if i >= len(stored) {
			return nil, nil, false
		}
		var r struct {
			Seq uint64 `json:"seq"`
		}
		_ = json.Unmarshal(stored[i], &r)
		v := stored[i]
		i++
		return audit.SeqKey(r.Seq), v, true
	}, cps), nil
}

// loadCheckpoints reads and verifies the checkpoints to trust: those at
// loc (a witness's file or URL), or those the log holds. A checkpoint
// that does not verify under key is an error naming why.
func (src auditSource) loadCheckpoints(ctx context.Context, loc string, key ed25519.PublicKey) ([]audit.Checkpoint, error) {
	var cps []audit.Checkpoint
	if loc != "" {
		b, err := readLocation(ctx, loc)
		if err != nil {
			return nil, fmt.Errorf("--checkpoint: %w", err)
		}
		if cps, err = audit.ReadCheckpoints(bytes.NewReader(unwrapStdoutWitness(b))); err != nil {
			return nil, fmt.Errorf("--checkpoint %s: %w", loc, err)
		}
	} else {
		var err error
		if cps, err = src.storedCheckpoints(ctx); err != nil {
			return nil, err
		}
	}
	for _, cp := range cps {
		if err := cp.Verify(key); err != nil {
			return nil, err
		}
	}
	return cps, nil
}

// unwrapStdoutWitness turns lines of the stdout witness
// ({"valet_audit_checkpoint": {...}}, perhaps among other log lines)
// into checkpoint lines; other input is returned as it is.
func unwrapStdoutWitness(b []byte) []byte {
	if !bytes.Contains(b, []byte(`"valet_audit_checkpoint"`)) {
		return b
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		var w struct {
			CP json.RawMessage `json:"valet_audit_checkpoint"`
		}
		if json.Unmarshal([]byte(line), &w) == nil && len(w.CP) > 0 {
			out = append(out, string(w.CP))
		}
	}
	return []byte(strings.Join(out, "\n"))
}
