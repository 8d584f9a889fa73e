// Package notify delivers valet's grant, break-glass, signal and agent
// events to webhooks (notifications.webhooks in the config), and its CAEP
// Security Event Tokens to Shared Signals receivers (webhooks of format
// set). It implements broker.Notifier.
//
// Delivery is best-effort and never holds up the broker: Notify queues the
// event for each interested webhook (at most QueueSize per webhook; the
// oldest is dropped when full) and returns; Run delivers each webhook's
// events in order on its own goroutine. A 2xx answer is success. A 429, a
// 5xx, a transport error or no answer within the webhook's timeout is
// retried after 1s, 2s, 4s, … (at most 5m, less up to a fifth at random,
// and at least what a Retry-After header asks), up to max_attempts
// attempts in all (default 8); then the event is given up on. Any other
// answer (a 4xx other than 429; a 3xx, as redirects are not followed)
// fails at once. Stats counts delivered, retried, failed and dropped
// events per webhook, with the last error, and OnResult feeds metrics.
//
// # Requests
//
// Every event is a POST with these headers:
//
//	Content-Type:      application/json
//	User-Agent:        valet/notify
//	X-Valet-Event:     grant.requested | grant.approved | grant.denied | grant.expired |
//	                   grant.redeemed | break_glass | break_glass.reviewed | job.failing |
//	                   signal | agent.quarantined | agent.released | agent.leases_revoked
//	X-Valet-Delivery:  an id unique to the event and webhook, the same on every retry
//	X-Valet-Timestamp: the attempt's time, in Unix seconds
//	X-Valet-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>"> (when secret_file is set)
//
// Receivers should ignore a delivery id they have already processed:
// an attempt whose answer was lost is sent again.
//
// # JSON format (format: json, the default)
//
// The body is the event, with the delivery id and the webhook's name:
//
//	{
//	  "id": "5XK2N7DQ3ZC4MVW6RBFJHT2YAE",
//	  "webhook": "security",
//	  "type": "break_glass",
//	  "severity": "high",
//	  "time": "2026-03-02T10:00:00Z",
//	  "grant": {
//	    "id": "0192f3…", "kind": "break_glass", "agent_id": "k8s/prod/deployer",
//	    "role": "prod-admin", "ttl": 900000000000, "reason": "db down",
//	    "lineage": {"issuer": "https://kubernetes.default.svc", "pod_uid": "…"},
//	    "requester": ["k8s/prod/deployer"], "binding": "…", "state": "redeemed",
//	    "required": 0, "created_at": "…", "expires_at": "…", "lease_id": "…"
//	  },
//	  "url": "https://valet.example.com/ui/grants/0192f3…"
//	}
//
// grant is valet's grants.Grant (ttl in nanoseconds). The agent events
// carry "agent" instead ({"id", "reason", "by", "signal_id", "risk",
// "revoked"}), and a signal's event "signal" (the accepted signal). Events
// never carry a credential, an attestation or a secret.
//
// # Shared Signals format (format: set)
//
// The body is a CAEP session-revoked Security Event Token (RFC 8417)
// signed by valet's SSF transmitter (broker/ssf), for agent.leases_revoked
// events only, with Content-Type application/secevent+jwt (RFC 8935); the
// SET's aud is the webhook's audience (default its url), and with a
// secret_file the request carries Authorization: Bearer <its content>. Any
// 2xx (RFC 8935 says 202) is success; a 400 (an RFC 8935 error) is final.
//
// # Slack format (format: slack)
//
// The body is a Slack incoming-webhook message: text is a one-line summary
// and blocks repeat it with the grant's details and severity:
//
//	{
//	  "text": ":warning: BREAK-GLASS: agent k8s/prod/deployer minted role prod-admin — reason \"db down\" (review required) <https://valet.example.com/ui/grants/0192f3…|open in console>",
//	  "blocks": [
//	    {"type": "section", "text": {"type": "mrkdwn", "text": "<the summary>"}},
//	    {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Agent*\nk8s/prod/deployer"}, …]},
//	    {"type": "section", "text": {"type": "mrkdwn", "text": "*Reason*\ndb down"}},
//	    {"type": "context", "elements": [{"type": "mrkdwn", "text": "severity: *high*  ·  break_glass  ·  2026-03-02T10:00:00Z"}]}
//	  ]
//	}
//
// A request reads "Approval needed: agent X asks for role Y for 15m —
// "reason" (0 of 2 approvals) <url|open in console>". Strings from agents
// and operators (reasons, comments, ids) have &, < and > escaped as Slack
// requires, so a reason cannot mention <!channel> or forge a link; line
// breaks are removed from the summary and long strings cut.
//
// # Verifying the signature
//
// The key is the content of secret_file with surrounding whitespace
// removed, used as bytes (not hex-decoded). A receiver recomputes the HMAC
// over the timestamp header, a '.', and the raw body exactly as received,
// compares in constant time, and rejects timestamps more than five minutes
// from its clock so a captured request cannot be replayed later (dedupe on
// X-Valet-Delivery for replays within the window):
//
//	func verify(secret []byte, r *http.Request, body []byte) bool {
//		ts := r.Header.Get("X-Valet-Timestamp")
//		sec, err := strconv.ParseInt(ts, 10, 64)
//		if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
//			return false
//		}
//		mac := hmac.New(sha256.New, secret)
//		mac.Write([]byte(ts + "."))
//		mac.Write(body)
//		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
//		return hmac.Equal([]byte(want), []byte(r.Header.Get("X-Valet-Signature")))
//	}
//
// From a shell, with the body saved byte for byte in body.json:
//
//	{ printf '%s.' "$TIMESTAMP"; cat body.json; } |
//	  openssl dgst -sha256 -hmac "$(cat secret)" -r | cut -d' ' -f1
//	# compare with X-Valet-Signature without its "sha256=" prefix
package notify
