// Package web is valet's operator console, served at /ui/ by the API
// server. Pages are rendered on the server with html/template from
// templates and static files embedded in the binary; the console is
// fully usable without JavaScript (console.js only confirms bulk
// revocations, shows local times and refreshes the grants page).
//
// # Pages
//
//   - /ui/login: sign in with an operator token (console.token_login) or
//     with single sign-on (console.oidc). /ui/logout (POST) signs out.
//   - /ui/grants: break-glass access awaiting review (flagged, with a
//     review form); pending approvals, oldest first, with agent, role,
//     TTL, reason, age, approvals so far (N/M) and expiry, Approve and
//     Deny buttons and a comment, and beside each the agent's latest
//     leases and recent denials; approved grants not yet redeemed; an
//     activity chart; the grant history, filterable by agent, role and
//     state.
//   - /ui/grants/{id}: one grant in full, with its decisions and forms;
//     this is the URL notifications link to.
//   - /ui/leases: leases filtered by agent, role, backend and state, a
//     Revoke button per live lease and "Revoke all of this agent".
//     /ui/leases/irrevocable lists leases whose revocation keeps failing,
//     with the last error, the attempts and the next attempt.
//   - /ui/agents: agents seen in the newest 1,000 leases with their
//     active leases and their mints and denials of the last 24 hours.
//   - /ui/audit: the audit log, newest first, filterable by kind and
//     agent, under the result of verifying its hash chain (cached for
//     30 seconds).
//
// The activity chart is an SVG drawn on the server: mints (mint records
// allowed), denials (mint records denied) and revocations (lease.revoke,
// lease.release and lease.revoked, once per lease) per hour over the last
// 24 hours, read from at most the newest 50,000 audit records.
//
// # Security
//
//   - Sessions live on the server (in memory: a restart signs everyone
//     out). The cookie __Host-valet-session holds 256 random bits; only
//     their SHA-256 is kept. It is Secure, HttpOnly, SameSite=Strict,
//     Path=/, without Domain. Sessions end after console.session_idle
//     without an operator action and console.session_max after sign-in,
//     by the injected clock; the grants page's automatic reload
//     (refresh=auto) is not an action and does not extend a session.
//     Signing out deletes the session, so a copied cookie stops working.
//     Every sign-in gets a new session id. One operator holds at most 16
//     sessions, and a full store ends the oldest session of the operator
//     holding the most.
//   - Every POST must come from the console's own origin: Sec-Fetch-Site
//     must be same-origin when sent, and Origin must be the public URL's
//     origin when sent (or "null", which same-origin forms send under
//     Referrer-Policy no-referrer); a request with neither is refused.
//     It must also carry the session's CSRF token (a hidden field,
//     compared in constant time); the sign-in form uses a double-submit
//     cookie instead, as it has no session yet.
//   - Approving, denying and reviewing need a sign-in within
//     console.fresh_login; older sessions, and SSO sessions whose sign-in
//     time is unknown (no auth_time), are sent to sign in again, with the
//     reason shown. Decisions are made as the session's operator (method
//     "console" for token sign-in, "sso:<issuer>" for SSO), so the
//     broker's approver and self-approval rules apply to all three.
//   - Every response carries Content-Security-Policy (default-src 'self';
//     frame-ancestors 'none'; form-action 'self'; base-uri 'none';
//     object-src 'none'), X-Content-Type-Options: nosniff,
//     Referrer-Policy: no-referrer, X-Frame-Options: DENY and
//     Cross-Origin-Opener-Policy; pages are Cache-Control: no-store; HSTS
//     when served over https. No page has inline script or style.
//   - Failed token sign-ins are limited per client address (10 a minute).
//   - The console shows no secrets: leases hold backend handles, never
//     credentials, and tokens typed into the sign-in form are never echoed
//     or logged.
//   - The console refuses to start when public_url is plain http to a host
//     that is not loopback: its cookie must not cross a network in clear
//     text.
//
// # Single sign-on
//
// With console.oidc set the console discovers the OpenID provider at
// start-up (New fails if it cannot; valet serve then runs the console
// with token sign-in only, when that is on, rather than not start) and
// signs operators in with the authorization code flow, PKCE (S256), state and nonce, using
// github.com/coreos/go-oidc/v3 and golang.org/x/oauth2. State, nonce and
// code verifier stay on the server, keyed by the state's hash and bound to
// the browser by the short-lived __Host-valet-sso cookie (SameSite=Lax, as
// the provider's redirect back is cross-site). Sign-ins in progress last
// 5 minutes; each client address (an IPv6 /64 counting as one) holds at
// most 8, and a full table drops the oldest of the client holding the
// most, so no client can keep another from signing in. The ID token must
// verify (issuer, audience, expiry, signature) and carry the flow's
// nonce. broker.OperatorFromClaims turns its claims into the operator, by
// the same rules as operator ID tokens at the API: the name is the
// console.oidc.name_claim claim (default email, which must be verified),
// the groups come from groups_claim (default groups), and only members of
// allowed_groups are admitted (or everyone, with allow_all: true). The
// session's sign-in time is auth_time; without it the session is not a
// fresh sign-in. A re-authentication for a decision asks the provider for
// prompt=login and max_age, and requires auth_time within fresh_login.
//
// Register valet at the provider as a confidential web client with the
// redirect URI <public_url>/ui/auth/callback (or console.oidc.redirect_url)
// and the scopes openid, email, profile and groups, then configure:
//
//	console:
//	  oidc:
//	    issuer: https://login.example.com
//	    client_id: valet-console
//	    client_secret_file: /etc/valet/console-client-secret
//	    allowed_groups: [valet-operators]
//
// Approver groups of roles (approval.approvers.groups) match the groups
// claim of SSO operators.
package web
