// Package strictjson decodes the JSON valet accepts from outside (request
// bodies, attestation headers and claims) by one set of rules, those of
// Go's encoding/json/v2 (github.com/go-json-experiment/json):
//
//   - the document is one JSON object (RFC 8259), with nothing after it;
//   - it is valid UTF-8, escapes included (RFC 8259 section 8.1): invalid
//     bytes and lone surrogates are refused, never replaced with U+FFFD;
//   - no object has the same key twice (RFC 8259 section 4 leaves the
//     meaning of duplicates open; RFC 7519 section 4 lets a JWT parser
//     refuse them);
//   - decoding into a struct, every key names a field exactly: unknown keys
//     and keys differing from a field's only in letter case are refused.
//
// Every refusal is an *Error whose message names the byte offset and, where
// there is one, the key; it is written for the client that sent the JSON.
package strictjson

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Error is JSON that breaks a rule of the package.
type Error struct {
	// Offset is the byte offset in the document where the problem is.
	Offset int64
	// Pointer is the JSON Pointer (RFC 6901) of the key or value at fault;
	// "" for the document itself.
	Pointer string
	// Message says what is wrong, including the offset and key.
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unmarshal decodes the JSON object b into v, a pointer to a struct or a
// map, by the package's rules. It returns an *Error for JSON that breaks
// them or does not fit v (a string where v has a number, ...); the
// message of an error returned by a field's UnmarshalJSON method is kept.
func Unmarshal(b []byte, v any) error {
	d := getDecoder(b)
	defer putDecoder(d)
	dec, err := open(b, &d.dec)
	if err != nil {
		return err
	}
	if err := json.UnmarshalDecode(dec, v, json.RejectUnknownMembers(true)); err != nil {
		return explain(err)
	}
	return end(dec)
}

// Check checks that b is one JSON object by the package's rules (syntax,
// UTF-8, duplicate keys, nothing after it), for callers that decode it
// with another decoder. It returns an *Error.
func Check(b []byte) error {
	d := getDecoder(b)
	defer putDecoder(d)
	dec, err := open(b, &d.dec)
	if err != nil {
		return err
	}
	if _, err := dec.ReadValue(); err != nil {
		return explain(err)
	}
	return end(dec)
}

// decoder is a jsontext.Decoder with the bytes.Buffer it reads from, kept
// in decoders between documents: a new Decoder costs an allocation, and the
// 4 KB string cache that decoding into a struct builds on first use
// (interned strings are immutable, so the cache is safe to keep).
type decoder struct {
	dec jsontext.Decoder
	in  bytes.Buffer
}

var decoders = sync.Pool{New: func() any { return new(decoder) }}

// getDecoder returns a decoder reading b. A bytes.Buffer lets the decoder
// parse b in place instead of copying it into a buffer of its own.
func getDecoder(b []byte) *decoder {
	d := decoders.Get().(*decoder)
	d.in = *bytes.NewBuffer(b)
	d.dec.Reset(&d.in)
	return d
}

// putDecoder returns d to the pool, keeping no reference to the document.
func putDecoder(d *decoder) {
	d.in = bytes.Buffer{}
	d.dec.Reset(&d.in) // drops the decoder's view of the old buffer
	decoders.Put(d)
}

// open checks the UTF-8 of the whole document (so the offset of a bad byte
// is exact, wherever it is) and that it starts with an object; dec reads b.
func open(b []byte, dec *jsontext.Decoder) (*jsontext.Decoder, error) {
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, n := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return nil, &Error{Offset: int64(off), Message: fmt.Sprintf("invalid UTF-8 at byte %d", off)}
	}
	switch k := dec.PeekKind(); k {
	case '{':
		return dec, nil
	case 0:
		// Empty, or not JSON at all: the decoder says which.
		_, err := dec.ReadToken()
		if err == nil || errors.Is(err, io.EOF) {
			return nil, &Error{Message: "the JSON document is empty; send a JSON object"}
		}
		return nil, explain(err)
	default:
		off := int64(len(b) - len(bytes.TrimLeft(b, " \t\r\n")))
		return nil, &Error{Offset: off, Message: fmt.Sprintf("the JSON document must be an object, not %s", kindName(k))}
	}
}

// end refuses anything after the object but white space.
func end(dec *jsontext.Decoder) error {
	off := dec.InputOffset()
	if _, err := dec.ReadToken(); errors.Is(err, io.EOF) {
		return nil
	}
	// Report where the extra data starts, not where the decoder stopped.
	off += int64(len(dec.UnreadBuffer()) - len(bytes.TrimLeft(dec.UnreadBuffer(), " \t\r\n")))
	return &Error{Offset: off, Message: fmt.Sprintf("data after the JSON object at byte %d; send exactly one object", off)}
}

// explain turns a json or jsontext error into an *Error.
func explain(err error) error {
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.As(err, &syn):
		ptr := syn.JSONPointer
		if errors.Is(syn.Err, jsontext.ErrDuplicateName) {
			return &Error{Offset: syn.ByteOffset, Pointer: string(ptr), Message: fmt.Sprintf("duplicate key %s%s at byte %d; each key may appear once",
				strconv.Quote(ptr.LastToken()), within(ptr.Parent()), syn.ByteOffset)}
		}
		if errors.Is(syn.Err, io.ErrUnexpectedEOF) {
			return &Error{Offset: syn.ByteOffset, Pointer: string(ptr), Message: fmt.Sprintf("the JSON ends early%s at byte %d", within(ptr), syn.ByteOffset)}
		}
		what := "syntax error"
		if syn.Err != nil {
			what = syn.Err.Error()
		}
		return &Error{Offset: syn.ByteOffset, Pointer: string(ptr), Message: fmt.Sprintf("malformed JSON%s at byte %d: %s", within(ptr), syn.ByteOffset, what)}
	case errors.As(err, &sem):
		return explainSemantic(sem)
	default:
		return &Error{Message: "invalid JSON: " + err.Error()}
	}
}

func explainSemantic(sem *json.SemanticError) error {
	ptr := sem.JSONPointer
	e := &Error{Offset: sem.ByteOffset, Pointer: string(ptr)}
	if errors.Is(sem.Err, json.ErrUnknownName) {
		name := ptr.LastToken()
		e.Message = fmt.Sprintf("unknown key %s%s at byte %d", strconv.Quote(name), within(ptr.Parent()), sem.ByteOffset)
		known := fieldNames(sem.GoType)
		if i := slices.IndexFunc(known, func(k string) bool { return strings.EqualFold(k, name) }); i >= 0 {
			e.Message += fmt.Sprintf("; keys are case-sensitive: did you mean %q?", known[i])
		} else if len(known) > 0 {
			e.Message += "; the keys are " + strings.Join(known, ", ")
		}
		return e
	}
	key := "the JSON document"
	if ptr != "" {
		key = "key " + strconv.Quote(strings.TrimPrefix(string(ptr), "/"))
	}
	if sem.Err != nil && hasUnmarshaler(sem.GoType) {
		// The type's own message says what it accepts.
		e.Message = fmt.Sprintf("%s at byte %d: %s", key, sem.ByteOffset, sem.Err)
		return e
	}
	e.Message = fmt.Sprintf("%s at byte %d must be %s", key, sem.ByteOffset, typeName(sem.GoType))
	if sem.JSONKind != 0 {
		e.Message += ", not " + kindName(sem.JSONKind)
	}
	return e
}

// within names the object a key is in, unless it is the document itself.
func within(ptr jsontext.Pointer) string {
	if ptr == "" {
		return ""
	}
	return " in " + strconv.Quote(strings.TrimPrefix(string(ptr), "/"))
}

func kindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "a JSON value"
}

func typeName(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "another type"
}

var (
	unmarshalerV1 = reflect.TypeFor[interface{ UnmarshalJSON([]byte) error }]()
	unmarshalerV2 = reflect.TypeFor[json.UnmarshalerFrom]()
)

func hasUnmarshaler(t reflect.Type) bool {
	if t == nil {
		return false
	}
	if t.Kind() != reflect.Pointer {
		t = reflect.PointerTo(t)
	}
	return t.Implements(unmarshalerV1) || t.Implements(unmarshalerV2)
}

// fieldNames lists the JSON keys of struct type t, in field order.
func fieldNames(t reflect.Type) []string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}
