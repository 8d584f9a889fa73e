package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"

	"github.com/valet-broker/valet/broker"
)

// maxFileBytes bounds one policy or test file. Real policy files are a few
// kilobytes; the bound keeps a stray large file from being read into memory.
const maxFileBytes = 4 << 20

// Set is an immutable, versioned set of Cedar policies. It is safe for
// concurrent use; an Engine swaps whole Sets rather than changing one. (It
// caches role and agent entities, which changes no decision; see
// entityCache.)
type Set struct {
	version  string
	policies orderedPolicies
	permits  int // how many permit policies; a set without any denies everything
	// needClaims is false when no policy can read principal.claims, so
	// Authorize can skip converting them, the largest part of its cost.
	needClaims bool
	roles      entityCache[broker.Role]
	principals entityCache[principalInputs]
	forbids    map[cedar.PolicyID]bool // the ids of the forbid policies
}

var _ broker.Authorizer = (*Set)(nil)

// namedPolicy is one policy and its valet id (see the package doc).
type namedPolicy struct {
	id     cedar.PolicyID
	policy *cedar.Policy
}

// orderedPolicies implements cedar.PolicyIterator over a slice, so policies
// are evaluated, and determining policies reported, in load order (file name,
// then position) rather than in Go's random map order.
type orderedPolicies []namedPolicy

// All yields each policy with its id, in load order.
func (p orderedPolicies) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, np := range p {
			if !yield(np.id, np.policy) {
				return
			}
		}
	}
}

// Version identifies the set by content: "sha256:" and the first 16 hex
// digits of a hash over every file's name and contents. Loading the same
// files gives the same version; any change to a name or a byte changes it.
func (s *Set) Version() string { return s.version }

// PolicyIDs returns the ids of the set's policies in load order.
func (s *Set) PolicyIDs() []string {
	ids := make([]string, len(s.policies))
	for i, np := range s.policies {
		ids[i] = string(np.id)
	}
	return ids
}

// Len returns the number of policies in the set.
func (s *Set) Len() int { return len(s.policies) }

// Load reads the *.cedar files of dir (not its subdirectories; names starting
// with "." are skipped, symbolic links are followed) and parses them into a
// Set. It returns an error when dir cannot be read, holds no *.cedar files or
// no policies at all, when a file is over 4 MiB or fails to parse (the message
// names the file and line), when a policy nests deeper than 10000 levels
// (which would overflow the parser's stack), or when two policies share an
// id. Errors of several files are joined, so one run reports them all.
func Load(dir string) (*Set, error) {
	files, err := readDirFiles("policy", dir, ".cedar")
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("policy directory %s has no *.cedar files; refusing to load an empty policy set, which would deny every request", dir)
	}
	return LoadFiles(files)
}

// LoadFiles parses policy files given as name → contents, in name order, into
// a Set. The names become part of policy ids and error messages; they are not
// read from disk. It returns the same errors as Load.
func LoadFiles(files map[string][]byte) (*Set, error) {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)

	var (
		errs    []error
		set     = &Set{forbids: map[cedar.PolicyID]bool{}}
		hash    = sha256.New()
		idFirst = map[cedar.PolicyID]string{} // id → where it was first defined
	)
	for _, name := range names {
		src := files[name]
		// Length-prefix each part so that moving bytes between a name and
		// its contents (or between files) can never keep the same hash.
		fmt.Fprintf(hash, "%d:%s%d:", len(name), name, len(src))
		hash.Write(src)

		if len(src) > maxFileBytes {
			errs = append(errs, fmt.Errorf("%s: file is %d bytes, over the %d byte limit", name, len(src), maxFileBytes))
			continue
		}
		if mayReadClaims(src) {
			set.needClaims = true
		}
		policies, err := parseFile(name, src)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, p := range policies {
			where := name + ":" + strconv.Itoa(p.Position().Line)
			id := cedar.PolicyID(name + ":" + strconv.Itoa(i))
			if v, ok := p.Annotations()["id"]; ok {
				if strings.TrimSpace(string(v)) == "" {
					errs = append(errs, fmt.Errorf("%s: @id must not be empty", where))
					continue
				}
				id = cedar.PolicyID(v)
			}
			if first, dup := idFirst[id]; dup {
				errs = append(errs, fmt.Errorf("%s: policy id %q is already used at %s; ids must be unique", where, id, first))
				continue
			}
			idFirst[id] = where
			if p.Effect() == cedar.Permit {
				set.permits++
			} else {
				set.forbids[id] = true
			}
			set.policies = append(set.policies, namedPolicy{id: id, policy: p})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(set.policies) == 0 {
		return nil, fmt.Errorf("policy files %s hold no policies; refusing to load an empty policy set, which would deny every request", strings.Join(names, ", "))
	}
	set.version = "sha256:" + hex.EncodeToString(hash.Sum(nil))[:16]
	return set, nil
}

// Authorize evaluates req against the set with Cedar's authorizer, failing
// closed on evaluation errors (policy.on_error deny): allowed only if some
// permit matches, no forbid does and no forbid fails to evaluate.
// PolicyIDs are the permits that allowed or the forbids that denied (empty
// on a default deny); Errors names each policy that failed to evaluate. It
// returns an EINTERNAL *broker.Error, and a deny, only when req has no
// principal, role or action, which is a bug in the caller. ctx is not used:
// evaluation is bounded and takes microseconds. An Engine decides with its
// configured policy.on_error instead.
func (s *Set) Authorize(_ context.Context, req broker.AuthzRequest) (broker.Decision, error) {
	return s.decide(req, broker.PolicyOnErrorDeny)
}

// decide is Authorize with the given treatment of evaluation errors.
func (s *Set) decide(req broker.AuthzRequest, onError broker.PolicyOnError) (dec broker.Decision, err error) {
	dec.Version = s.version
	if req.Principal == nil || req.Role == nil || req.Action == "" {
		return dec, broker.Errorf(broker.EINTERNAL, "policy: authorization request needs a principal, an action and a role")
	}
	// cedar-go is not known to panic, but a panic here would take down the
	// mint path for every agent; turn it into a denial with an error.
	defer func() {
		if r := recover(); r != nil {
			dec = broker.Decision{Version: s.version}
			err = broker.Wrap(broker.EINTERNAL, fmt.Errorf("panic: %v", r), "policy evaluation failed")
		}
	}()

	creq, entities := s.cedarRequest(req)
	decision, diag := cedar.Authorize(s.policies, entities, creq)
	dec.Allowed = decision == cedar.Allow
	if len(diag.Reasons) > 0 {
		dec.PolicyIDs = make([]string, len(diag.Reasons))
		for i, r := range diag.Reasons {
			dec.PolicyIDs[i] = string(r.PolicyID)
		}
	}
	var erroredForbids []string
	for _, e := range diag.Errors {
		forbid := s.forbids[e.PolicyID]
		dec.Errors = append(dec.Errors, broker.PolicyError{PolicyID: string(e.PolicyID), Forbid: forbid, Message: e.Message})
		if forbid {
			erroredForbids = append(erroredForbids, string(e.PolicyID))
		}
	}
	// Cedar skips a policy that fails to evaluate. For a permit that is
	// already safe (it cannot allow); a forbid that errors must deny, or a
	// claim of an unexpected type would turn a guard off. A forbid that
	// matched decides on its own.
	forbidden := decision == cedar.Deny && len(diag.Reasons) > 0
	if onError != broker.PolicyOnErrorSkip && len(erroredForbids) > 0 && !forbidden {
		dec.Allowed, dec.PolicyIDs, dec.FailedClosed = false, erroredForbids, true
	}
	return dec, nil
}

// readDirFiles returns name → contents of the regular files in dir (following
// symbolic links) whose names end in suffix and do not start with ".". kind
// ("policy", "test") names the directory in errors.
func readDirFiles(kind, dir, suffix string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s directory: %w", kind, err)
	}
	files := map[string][]byte{}
	for _, entry := range entries {
		name := entry.Name()
		if !strings.HasSuffix(name, suffix) || strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		info, err := os.Stat(path) // Stat, not entry.Info: follow symlinks
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if !info.Mode().IsRegular() {
			continue
		}
		b, err := readLimited(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		files[name] = b
	}
	return files, nil
}

// readLimited reads a file of at most maxFileBytes.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("file is over the %d byte limit", maxFileBytes)
	}
	return b, nil
}
