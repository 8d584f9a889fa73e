package policy

import (
	"fmt"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// maxExprDepth bounds how deeply one policy's expression may nest. cedar-go
// parses and constant-folds recursively, about a kilobyte of stack per level;
// a policy nesting a million levels (a megabyte of "!" or "(") overflows the
// goroutine stack, a fatal error that no recover can catch, and a reload
// would take the broker down. Real policies nest a few dozen levels; the
// bound leaves a wide margin on both sides.
const maxExprDepth = 10000

// parseFile parses the policies of one file. Errors name the file and the
// line: "default.cedar:4:32: ...".
func parseFile(name string, src []byte) (policies cedar.PolicyList, err error) {
	if err := checkNesting(name, src); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			policies, err = nil, fmt.Errorf("%s: cedar parser failed: %v", name, r)
		}
	}()
	policies, err = cedar.NewPolicyListFromBytes(name, src)
	if err != nil {
		return nil, parseError(name, err)
	}
	return policies, nil
}

// parseError rewrites cedar-go's "parser error: parse error at <input>:4:32
// ..." so that it names the file: "parse error at default.cedar:4:32 ...".
func parseError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "parser error: ")
	if strings.Contains(msg, "<input>") {
		return fmt.Errorf("%s", strings.ReplaceAll(msg, "<input>", name))
	}
	return fmt.Errorf("%s: %s", name, msg)
}

// exprGroup tracks one bracketed group, "(...)", "[...]" or "{...}", while
// checkNesting scans. Within a group, commas separate siblings (set elements,
// record fields, call arguments), which do not nest in each other.
type exprGroup struct {
	tokens   int // tokens of the current comma-separated part, outside subgroups
	subDepth int // deepest subgroup of the current part
	maxDepth int // deepest finished part
}

// depth is an upper bound of the expression depth of the group: each level of
// the syntax tree consumes at least one token of its own.
func (g exprGroup) depth() int { return max(g.maxDepth, g.tokens+g.subDepth) }

// checkNesting rejects, before cedar-go sees it, a policy whose syntax tree
// could be deeper than maxExprDepth. It is a conservative estimate from a
// light tokenization (strings, identifiers and numbers count as one token,
// every other character as one), so it never rejects a policy of ordinary
// shape, and it runs in one pass without recursion.
func checkNesting(name string, src []byte) error {
	stack := []exprGroup{{}} // stack[0] is the policy itself, up to its ";"
	line, policyLine, inPolicy := 1, 1, false
	tooDeep := func(at int) error {
		return fmt.Errorf("%s:%d: policy nests more than %d levels deep; split the condition or use a set literal", name, at, maxExprDepth)
	}
	finishPolicy := func() error {
		for len(stack) > 1 { // unbalanced: close the open groups
			closeGroup(&stack)
		}
		if stack[0].depth() > maxExprDepth {
			return tooDeep(policyLine)
		}
		stack[0] = exprGroup{}
		inPolicy = false
		return nil
	}

	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
			continue
		case c == ' ' || c == '\t' || c == '\r':
			i++
			continue
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			continue
		}
		if !inPolicy {
			policyLine, inPolicy = line, true
		}
		top := &stack[len(stack)-1]
		switch {
		case c == '"':
			i++
			for i < len(src) && src[i] != '"' {
				if src[i] == '\\' {
					i++
				}
				if i < len(src) && src[i] == '\n' {
					line++
				}
				i++
			}
			i++ // the closing quote
			top.tokens++
		case isIdentByte(c):
			for i < len(src) && isIdentByte(src[i]) {
				i++
			}
			top.tokens++
		case c == '(' || c == '[' || c == '{':
			top.tokens++
			stack = append(stack, exprGroup{})
			if len(stack) > maxExprDepth {
				return tooDeep(policyLine)
			}
			i++
		case c == ')' || c == ']' || c == '}':
			if len(stack) > 1 { // an unbalanced one is the parser's to report
				closeGroup(&stack)
			}
			i++
		case c == ',':
			top.maxDepth = top.depth()
			top.tokens, top.subDepth = 0, 0
			i++
		case c == ';' && len(stack) == 1:
			if err := finishPolicy(); err != nil {
				return err
			}
			i++
		default:
			top.tokens++
			i++
		}
	}
	return finishPolicy()
}

// closeGroup pops the innermost group and records its depth in its parent.
func closeGroup(stack *[]exprGroup) {
	s := *stack
	inner := s[len(s)-1]
	s = s[:len(s)-1]
	parent := &s[len(s)-1]
	parent.subDepth = max(parent.subDepth, inner.depth())
	*stack = s
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
