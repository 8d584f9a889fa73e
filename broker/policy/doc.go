// Package policy decides, with Cedar policies (github.com/cedar-policy/cedar-go),
// whether an agent may do what it asks: mint or renew a credential for a role.
//
// Policies are *.cedar files in one directory, loaded in name order. The
// loaded set is immutable and versioned by a content hash; an [Engine] holds
// the current set behind an atomic pointer, so authorization never takes a
// lock, and swaps it on [Engine.Reload] (SIGHUP, or [Engine.Watch] on file
// changes). A set that fails to load never replaces a working one.
//
// Decisions follow Cedar: deny by default, and any matching forbid wins over
// every permit. valet calls Cedar's own authorizer; it does not reimplement it.
//
// # Evaluation errors
//
// A policy can fail to evaluate for one request and not another: it reads an
// attribute the principal lacks, or calls .contains on a claim that is a list
// for most agents and a string for this one. Cedar skips such a policy and
// reports the error. That is safe for a permit (it cannot allow) but not for
// a forbid: a guard would turn off for exactly the odd input. So by default
// (policy.on_error: deny) a forbid that fails to evaluate denies the request,
// unless a forbid that did evaluate denies it anyway; the decision's reason
// names the erroring forbids ("policy evaluation error in forbid policy X
// (fail closed)"). policy.on_error: skip chooses Cedar's semantics. Either
// way every error is logged at WARN by the [Engine] (policy id, request id,
// agent, role, error), reported to Options.OnEvalError (the metric
// valet_policy_evaluation_errors_total{policy}), and listed in
// [broker.Decision].Errors, which the broker records in the decision's audit
// record (policy_errors).
//
// # Files
//
// The policy directory is read non-recursively. Files whose name ends in
// ".cedar" are loaded in byte order of their names; names starting with "."
// (editor lock and swap files) are skipped; symbolic links are followed, so a
// Kubernetes ConfigMap mount works. A directory with no policies is refused:
// an empty set would silently deny every request. A single file may hold many
// policies and is limited to 4 MiB.
//
// # Policy ids
//
// A policy's id is its @id("...") annotation when it has one, otherwise
// "<file name>:<index>", the index counting the policies of that file from 0
// (for example "default.cedar:1"). Ids must be unique across the set; a
// duplicate is a load error. Decisions, audit records and test expectations
// name policies by these ids.
//
// # Entity model
//
// Policy authors write Cedar against the following entities. Types are Cedar
// types; "Long" is a 64-bit integer.
//
// The principal is Agent::"<issuer-name>/<sub>", whose parent is
// Issuer::"<issuer-name>" (so `principal in Issuer::"k8s-prod"` holds for
// every agent of that issuer). Its attributes:
//
//	issuer      String  name of the trusted issuer in valet's configuration
//	iss         String  the token's iss (the issuer URL)
//	sub         String  the token's subject
//	claims      Record  every verified claim of the token (see below)
//	<attribute> String  each attribute the issuer maps from claims, for
//	                    example namespace, service_account, repository
//
// Mapped attributes sit at the top level (principal.namespace). One named
// issuer, iss, sub or claims is not copied: the reserved attribute wins. Names
// that are not Cedar identifiers (with a dash or a dot, say) are reached with
// string syntax: principal["name-with-dash"] and
// principal has "name-with-dash". The same syntax reaches such claims:
// principal.claims["kubernetes.io"].namespace.
//
// Claims are converted from JSON as follows: strings are Strings, booleans
// Booleans, integral numbers that fit in 64 bits Longs; other numbers (with a
// fraction, or too large) become Strings of their decimal form, because Cedar
// has no floating point; arrays become Sets (Cedar sets are unordered and
// drop duplicates); objects become Records; null values are dropped. Nesting
// is bounded: principal.claims is the first level of records and sets, and a
// record or set that would be the 17th level is dropped with its contents,
// so a hostile token cannot make conversion or evaluation recurse without
// bound. Test for an optional claim with `has` before reading it; reading a
// missing attribute is an evaluation error (see Evaluation errors).
//
// The action is Action::"<action>": Action::"mint" and Action::"renew" today;
// any action valet adds later (redeem, break_glass) arrives the same way,
// with no change to this package.
//
// The resource is Role::"<role name>" with attributes:
//
//	name                String  the role's name
//	backend             String  the backend that mints it
//	ttl_seconds         Long    the role's default TTL (whole seconds, rounded down)
//	max_ttl_seconds     Long    the role's maximum TTL (whole seconds, rounded down)
//	approvals_required  Long    distinct operator approvals the role needs
//	labels              Record  the role's labels, String values ({} if none)
//	scopes              Set     of String
//	audience            Set     of String
//
// The context of each request:
//
//	ttl_seconds  Long      the TTL being asked for, rounded up to whole seconds
//	                       (so ttl_seconds <= 900 never admits 900.5s)
//	reason       String    the reason the agent gave, "" if none
//	source_ip    ipaddr    the client address (a port, if given, is ignored);
//	                       ip("0.0.0.0") when unknown or unparseable. An
//	                       IPv4-mapped IPv6 address is unmapped, so
//	                       isInRange(ip("10.0.0.0/8")) matches it.
//	now          datetime  the time of the request, millisecond precision
//	now_unix     Long      the same, in seconds since the Unix epoch
//	hour         Long      hour of the day, 0-23, UTC
//	weekday      String    "mon", "tue", "wed", "thu", "fri", "sat", "sun" (UTC)
//	risk         Long      the agent's risk score, 0-100 (0 until containment)
//	approvals    Long      distinct operators who approved this request
//
// For example:
//
//	@id("pg-readonly-agents")
//	permit(principal in Issuer::"k8s-prod", action == Action::"mint", resource == Role::"pg-readonly")
//	when { principal.namespace == "agents" && context.ttl_seconds <= 900 };
//
//	@id("high-risk")
//	forbid(principal, action, resource) when { context.risk >= 70 };
//
//	@id("office-hours")
//	forbid(principal, action, resource)
//	when { resource.labels has "env" && resource.labels.env == "prod" &&
//	       (context.hour < 8 || context.hour >= 18 || ["sat", "sun"].contains(context.weekday)) };
//
// # Policy tests
//
// `valet policy test DIR` ([RunTests]) runs the cases of every *.test.yaml
// file of a directory against the policies, through the same code that
// authorizes production requests. Keys are strict: an unknown key is an
// error. A case:
//
//	cases:
//	  - name: agents namespace may mint pg-readonly for 15 minutes  # required, unique
//	    principal:
//	      issuer: k8s-prod                      # required: config issuer name
//	      iss: https://kubernetes.default.svc
//	      sub: system:serviceaccount:agents:bot # required
//	      claims: {kubernetes.io: {namespace: agents}}
//	      attributes: {namespace: agents, service_account: bot}
//	    action: mint                            # default mint
//	    role:
//	      name: pg-readonly                     # required
//	      backend: vault-main
//	      ttl: 15m                              # default 15m
//	      max_ttl: 1h                           # default the larger of 1h and ttl
//	      labels: {env: prod}
//	      scopes: [read]
//	      audience: [db]
//	      approvals_required: 0
//	    context:
//	      ttl: 15m                              # default the role's ttl; "90s", "15m" or seconds
//	      reason: nightly report
//	      source_ip: 10.0.0.7
//	      now: 2026-03-02T10:00:00Z             # default 2026-01-05T12:00:00Z, a Monday noon UTC
//	      risk: 0
//	      approvals: 0
//	    expect: allow                           # allow | deny (required)
//	    expect_policies: [pg-readonly-agents]   # optional: the determining policy ids, as a set
//	    expect_errors: []                       # optional: the policies expected to fail to evaluate, as a set
//
// Claims go through a JSON round trip before use, so a number in a test
// behaves exactly as the same number in a token.
//
// Cases are decided as a server with policy.on_error deny decides them, or
// with [TestOptions].OnError (valet policy test --on-error skip). A policy
// that fails to evaluate fails the case unless expect_errors lists it, so a
// forbid with a misspelt attribute cannot pass unnoticed; a case whose
// expect_errors lists a policy that evaluated fails too.
//
// The runner prints "PASS <name>" or "FAIL <name>: <what differed>" for each
// case and a summary line. A passing case with expected evaluation errors
// names them on its PASS line.
package policy
