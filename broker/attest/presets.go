package attest

import (
	"github.com/valet-broker/valet/broker/claimpath"
	"strings"

	"github.com/valet-broker/valet/broker"
)

// principal builds the Principal of a verified token: the issuer type's
// preset attributes and lineage first, then the issuer's claim mappings on
// top.
func (ti *trustedIssuer) principal(claims map[string]any, c *checkedClaims) (*broker.Principal, error) {
	p := &broker.Principal{
		ID:         ti.cfg.Name + "/" + c.subject,
		Issuer:     ti.cfg.Name,
		IssuerURL:  c.iss,
		Subject:    c.subject,
		Claims:     claims,
		Attributes: map[string]string{},
		Lineage:    broker.Lineage{Issuer: c.iss, JTI: c.jti},
		IssuedAt:   c.iat,
		ExpiresAt:  c.exp,
	}
	var err error
	switch ti.cfg.Type {
	case IssuerKubernetes:
		err = kubernetesPreset(claims, p)
	case IssuerGitHub:
		err = githubPreset(claims, p)
	case IssuerSPIFFE:
		err = spiffePreset(claims, ti.cfg.TrustDomain, p)
	}
	if err != nil {
		return nil, err
	}
	for _, m := range ti.mappings {
		v, ok := claimpath.Lookup(claims, m.path)
		if !ok || v == nil {
			continue // a missing or null claim is simply no attribute
		}
		s, ok := scalarString(v)
		if !ok {
			return nil, unauthorized("claim %s (mapped to attribute %s by issuer %s) must be a string, number or boolean", clip(m.path), clip(m.attr), ti.cfg.Name)
		}
		p.Attributes[m.attr] = s
	}
	return p, nil
}

// claimMapping is one entry of IssuerConfig.ClaimMappings; trustedIssuer
// keeps them sorted by attribute so errors are deterministic.
type claimMapping struct{ attr, path string }

// kubernetesPreset reads a Kubernetes service-account token: sub is
// system:serviceaccount:<namespace>:<name>, and the "kubernetes.io" claim
// holds the namespace, service account, pod and node (bound tokens). The
// two must agree, or the token is rejected.
func kubernetesPreset(claims map[string]any, p *broker.Principal) error {
	sub, _ := claims["sub"].(string)
	ns, sa, ok := serviceAccountSubject(sub)
	if !ok {
		return unauthorized("kubernetes attestation sub %s is not system:serviceaccount:<namespace>:<name>", clip(sub))
	}
	k8s, err := objectClaim(claims, "kubernetes.io", "kubernetes.io")
	if err != nil {
		return err
	}
	claimNS, err := stringClaim(k8s, "namespace", "kubernetes.io.namespace")
	if err != nil {
		return err
	}
	if claimNS != "" && claimNS != ns {
		return unauthorized("kubernetes attestation sub names namespace %s but kubernetes.io.namespace is %s", clip(ns), clip(claimNS))
	}
	set := func(attr, v string) {
		if v != "" {
			p.Attributes[attr] = v
		}
	}
	set("namespace", ns)
	set("service_account", sa)

	saObj, err := objectClaim(k8s, "serviceaccount", "kubernetes.io.serviceaccount")
	if err != nil {
		return err
	}
	saName, err := stringClaim(saObj, "name", "kubernetes.io.serviceaccount.name")
	if err != nil {
		return err
	}
	if saName != "" && saName != sa {
		return unauthorized("kubernetes attestation sub names service account %s but kubernetes.io.serviceaccount.name is %s", clip(sa), clip(saName))
	}
	saUID, err := stringClaim(saObj, "uid", "kubernetes.io.serviceaccount.uid")
	if err != nil {
		return err
	}
	set("service_account_uid", saUID)

	for _, obj := range []struct{ key, nameAttr, uidAttr string }{
		{"pod", "pod", "pod_uid"},
		{"node", "node", ""},
	} {
		o, err := objectClaim(k8s, obj.key, "kubernetes.io."+obj.key)
		if err != nil {
			return err
		}
		name, err := stringClaim(o, "name", "kubernetes.io."+obj.key+".name")
		if err != nil {
			return err
		}
		set(obj.nameAttr, name)
		uid, err := stringClaim(o, "uid", "kubernetes.io."+obj.key+".uid")
		if err != nil {
			return err
		}
		if obj.uidAttr != "" {
			set(obj.uidAttr, uid)
		}
		if obj.key == "pod" {
			if err := checkIdentity("claim kubernetes.io.pod.uid", uid); err != nil {
				return err
			}
			p.Lineage.PodUID = uid
		}
	}
	return nil
}

// serviceAccountSubject splits system:serviceaccount:<namespace>:<name>.
func serviceAccountSubject(sub string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(sub, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}

// objectClaim returns m[key] as an object; nil if absent. path names the
// claim in the error.
func objectClaim(m map[string]any, key, path string) (map[string]any, error) {
	raw, ok := m[key]
	if !ok || raw == nil {
		return nil, nil
	}
	o, ok := raw.(map[string]any)
	if !ok {
		return nil, unauthorized("attestation claim %s must be an object", path)
	}
	return o, nil
}

// stringClaim returns m[key] as a string; "" if absent.
func stringClaim(m map[string]any, key, path string) (string, error) {
	raw, ok := m[key]
	if !ok || raw == nil {
		return "", nil
	}
	s, ok := raw.(string)
	if !ok {
		return "", unauthorized("attestation claim %s must be a string", path)
	}
	return s, nil
}

// githubClaims are the GitHub Actions OIDC claims that become attributes
// under the same names.
var githubClaims = []string{
	"repository", "repository_owner", "repository_id", "ref", "ref_type", "sha",
	"workflow", "job_workflow_ref", "environment", "actor", "event_name",
	"run_id", "run_attempt",
}

// githubPreset reads a GitHub Actions OIDC token.
func githubPreset(claims map[string]any, p *broker.Principal) error {
	for _, name := range githubClaims {
		raw, ok := claims[name]
		if !ok || raw == nil {
			continue
		}
		s, ok := scalarString(raw)
		if !ok {
			return unauthorized("github attestation claim %s must be a string or a number", name)
		}
		p.Attributes[name] = s
	}
	if err := checkIdentity("claim run_id", p.Attributes["run_id"]); err != nil {
		return err
	}
	p.Lineage.RunID = p.Attributes["run_id"]
	return nil
}

// spiffePreset reads a SPIFFE JWT-SVID: sub must be a valid SPIFFE ID, in
// the configured trust domain if there is one.
func spiffePreset(claims map[string]any, trustDomain string, p *broker.Principal) error {
	sub, _ := claims["sub"].(string)
	td, path, err := parseSPIFFEID(sub)
	if err != nil {
		return unauthorized("spiffe attestation sub %s is not a valid SPIFFE ID: %s", clip(sub), err)
	}
	if trustDomain != "" && td != trustDomain {
		return unauthorized("spiffe attestation sub is in trust domain %s, not %s", clip(td), clip(trustDomain))
	}
	p.Attributes["spiffe_id"] = sub
	p.Attributes["trust_domain"] = td
	p.Attributes["path"] = path
	p.Lineage.SPIFFEID = sub
	if p.Lineage.Issuer == "" {
		// A JWT-SVID without iss is known by its trust domain, so that
		// lineage ids of different trust domains never collide.
		p.Lineage.Issuer = "spiffe://" + td
	}
	return nil
}

// parseSPIFFEID checks id against the SPIFFE ID specification (section 2):
// spiffe://<trust domain><path>, the trust domain of [a-z0-9.-_], the path
// one or more /-separated segments of [a-zA-Z0-9.-_], none empty, "." or
// "..". Ports, user info, queries, fragments and percent-encoding are
// excluded by those character sets. A workload's ID needs a path: an ID
// without one names the trust domain itself.
func parseSPIFFEID(id string) (trustDomain, path string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", spiffeError("it must start with spiffe://")
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return "", "", spiffeError("it has no path")
	}
	trustDomain, path = rest[:slash], rest[slash:]
	if trustDomain == "" {
		return "", "", spiffeError("the trust domain is empty")
	}
	for i := 0; i < len(trustDomain); i++ {
		c := trustDomain[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return "", "", spiffeError("the trust domain may only hold lower-case letters, digits, '.', '-' and '_'")
		}
	}
	for _, seg := range strings.Split(path[1:], "/") {
		switch seg {
		case "":
			return "", "", spiffeError("the path has an empty segment")
		case ".", "..":
			return "", "", spiffeError("the path has a . or .. segment")
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
				return "", "", spiffeError("the path may only hold letters, digits, '.', '-' and '_'")
			}
		}
	}
	return trustDomain, path, nil
}

type spiffeError string

func (e spiffeError) Error() string { return string(e) }
