package leases

import (
	"bytes"
	"strconv"

	"github.com/valet-broker/valet/leases/jsonenc"
)

// Encode returns the lease's JSON, as AppendJSON writes it, in a slice of
// its own (exactly its length): the form stores keep.
func (l *Lease) Encode() ([]byte, error) {
	var scratch [1024]byte // a lease's JSON is ~600 bytes; longer ones grow onto the heap
	b, err := l.AppendJSON(scratch[:0])
	if err != nil {
		return nil, err
	}
	return bytes.Clone(b), nil
}

// AppendJSON appends the lease as JSON to b: the same bytes as
// encoding/json's Marshal of the lease (TestLeaseAppendJSONIsMarshal
// compares them for leases with every field set and unset), without its
// reflection. Stores encode every new lease on the mint path with it. The
// error is Marshal's: a time that RFC 3339 cannot write, or a scope value
// encoding/json refuses.
func (l *Lease) AppendJSON(b []byte) ([]byte, error) {
	var err error
	str := func(b []byte, key, v string) []byte { return jsonenc.String(append(b, key...), v) }
	b = str(b, `{"id":`, l.ID)
	b = str(b, `,"agent_id":`, l.AgentID)
	b = str(b, `,"role":`, l.Role)
	b = str(b, `,"backend":`, l.Backend)
	if l.Handle != "" {
		b = str(b, `,"handle":`, l.Handle)
	}
	if len(l.Details) > 0 {
		b = append(b, `,"details":`...)
		b = jsonenc.StringMap(b, l.Details)
	}
	b = str(b, `,"state":`, string(l.State))
	if l.EndReason != "" {
		b = str(b, `,"end_reason":`, string(l.EndReason))
	}
	if b, err = jsonenc.Time(append(b, `,"created_at":`...), l.CreatedAt); err != nil {
		return nil, err
	}
	if b, err = jsonenc.Time(append(b, `,"expires_at":`...), l.ExpiresAt); err != nil {
		return nil, err
	}
	if !l.EndedAt.IsZero() {
		if b, err = jsonenc.Time(append(b, `,"ended_at":`...), l.EndedAt); err != nil {
			return nil, err
		}
	}
	b = strconv.AppendInt(append(b, `,"renew_count":`...), int64(l.RenewCount), 10)
	b = jsonenc.Bool(append(b, `,"renewable":`...), l.Renewable)
	if !l.MaxExpires.IsZero() {
		if b, err = jsonenc.Time(append(b, `,"max_expires_at":`...), l.MaxExpires); err != nil {
			return nil, err
		}
	}
	if l.GrantID != "" {
		b = str(b, `,"grant_id":`, l.GrantID)
	}
	if len(l.Approvers) > 0 {
		b = append(b, `,"approvers":[`...)
		for i, a := range l.Approvers {
			if i > 0 {
				b = append(b, ',')
			}
			b = jsonenc.String(b, a)
		}
		b = append(b, ']')
	}
	b = append(b, `,"lineage":{`...)
	sep := ""
	for _, f := range [...]struct{ key, v string }{
		{`"issuer":`, l.Lineage.Issuer}, {`"jti":`, l.Lineage.JTI}, {`"pod_uid":`, l.Lineage.PodUID},
		{`"run_id":`, l.Lineage.RunID}, {`"spiffe_id":`, l.Lineage.SPIFFEID},
	} {
		if f.v != "" {
			b = str(b, sep+f.key, f.v)
			sep = ","
		}
	}
	b = append(b, '}')
	if l.RequestID != "" {
		b = str(b, `,"request_id":`, l.RequestID)
	}
	if len(l.Scope) > 0 {
		if b, err = jsonenc.Map(append(b, `,"scope":`...), l.Scope); err != nil {
			return nil, err
		}
	}
	if !l.CredentialExpires.IsZero() {
		if b, err = jsonenc.Time(append(b, `,"credential_expires_at":`...), l.CredentialExpires); err != nil {
			return nil, err
		}
	}
	if l.Unrevocable {
		b = append(b, `,"unrevocable":true`...)
	}
	if l.RevokeAttempts != 0 {
		b = strconv.AppendInt(append(b, `,"revoke_attempts":`...), int64(l.RevokeAttempts), 10)
	}
	if l.LastError != "" {
		b = str(b, `,"last_error":`, l.LastError)
	}
	if !l.NextAttempt.IsZero() {
		if b, err = jsonenc.Time(append(b, `,"next_attempt":`...), l.NextAttempt); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}
