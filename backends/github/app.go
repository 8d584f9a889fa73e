package github

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	gh "github.com/google/go-github/v93/github"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/leases/clock"
)

// App JWT timing (GitHub: "iat ... 60 seconds in the past", "exp ... no more
// than 10 minutes into the future").
const (
	jwtBackdate = 60 * time.Second
	jwtLifetime = 9 * time.Minute // under GitHub's 10, for clock drift
	jwtRenew    = time.Minute     // sign a new one this long before exp
)

// app is one GitHub App valet acts as.
type app struct {
	name   string
	id     int64
	iss    string
	key    *rsa.PrivateKey
	clock  clock.Clock
	client *gh.Client // authenticates every request with the app JWT

	mu  sync.Mutex
	jwt string
	exp time.Time
}

func (b *Backend) newApp(o AppOptions, key *rsa.PrivateKey) (*app, error) {
	a := &app{name: o.Name, id: o.AppID, iss: o.ClientID, key: key, clock: b.clock}
	if a.iss == "" {
		a.iss = strconv.FormatInt(o.AppID, 10)
	}
	c, err := b.client(&appTransport{app: a, base: b.httpc.Transport})
	if err != nil {
		return nil, err
	}
	a.client = c
	return a, nil
}

// token returns a valid app JWT, signing a new one when the last is near
// its expiry.
func (a *app) token() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	if a.jwt != "" && now.Add(jwtRenew).Before(a.exp) {
		return a.jwt, nil
	}
	exp := now.Add(jwtLifetime).Truncate(time.Second)
	t, err := jwt.NewBuilder().Issuer(a.iss).IssuedAt(now.Add(-jwtBackdate)).Expiration(exp).Build()
	if err != nil {
		return "", err
	}
	signed, err := jwt.Sign(t, jwt.WithKey(jwa.RS256, a.key))
	if err != nil {
		return "", fmt.Errorf("sign the app JWT of app %s: %w", a.name, err)
	}
	a.jwt, a.exp = string(signed), exp
	return a.jwt, nil
}

// appTransport authenticates each request as the app (Authorization:
// Bearer <app JWT>).
type appTransport struct {
	app  *app
	base http.RoundTripper
}

func (t *appTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.app.token()
	if err != nil {
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+tok)
	return t.base.RoundTrip(req)
}

// appKeyFile is the on-disk form of a backend's app keys.
type appKeyFile struct {
	Apps []sealedAppKey `json:"apps"`
}

type sealedAppKey struct {
	Name  string `json:"name"`
	AppID int64  `json:"app_id"`
	// Sealed is the PKCS#8 DER of the app's private key.
	kek.Sealed
}

func appKeyAAD(backend, name string, id int64) []byte {
	return []byte(fmt.Sprintf("valet/github-app-key/%s/%s/%d", backend, name, id))
}

// loadAppKeys returns each app's private key, in the order of apps: read
// from its private_key_file when that file exists, else from the sealed
// copy in path. Keys read from files are sealed into path, so the files
// may be removed afterwards.
func loadAppKeys(path string, ring kek.Ring, backend string, apps []AppOptions) ([]*rsa.PrivateKey, error) {
	var f appKeyFile
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	sealed := map[string]sealedAppKey{}
	for _, s := range f.Apps {
		sealed[s.Name] = s
	}
	out := make([]*rsa.PrivateKey, len(apps))
	var save appKeyFile
	changed := false
	for i, a := range apps {
		k, fromFile, err := readAppKey(a.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("apps[%d].private_key_file: %w", i, err)
		}
		s, haveSealed := sealed[a.Name]
		switch {
		case fromFile:
			der, err := x509.MarshalPKCS8PrivateKey(k)
			if err != nil {
				return nil, err
			}
			if haveSealed && s.AppID == a.AppID {
				if old, prev, err := ring.Open(appKeyAAD(backend, a.Name, a.AppID), s.Sealed); err == nil && !prev && bytes.Equal(old, der) {
					break // already sealed
				}
			}
			if s.Sealed, err = ring.Seal(appKeyAAD(backend, a.Name, a.AppID), der); err != nil {
				return nil, err
			}
			s.Name, s.AppID = a.Name, a.AppID
			changed = true
		case !haveSealed || s.AppID != a.AppID:
			where := "apps[%d].private_key_file is required"
			if a.PrivateKeyFile != "" {
				where = "apps[%d].private_key_file " + a.PrivateKeyFile + " does not exist"
			}
			return nil, fmt.Errorf(where+", and %s holds no sealed key of app %s (app_id %d)", i, path, a.Name, a.AppID)
		default:
			der, _, err := ring.Open(appKeyAAD(backend, a.Name, a.AppID), s.Sealed)
			if errors.Is(err, kek.ErrOpen) {
				return nil, fmt.Errorf("apps[%d]: the sealed key of app %s in %s: %w (while switching to a new key-encryption key, set the old one as VALET_KEK_PREVIOUS or kek_previous_file)", i, a.Name, path, err)
			}
			if err != nil {
				return nil, fmt.Errorf("apps[%d]: the sealed key of app %s in %s: %w", i, a.Name, path, err)
			}
			pk, err := x509.ParsePKCS8PrivateKey(der)
			rk, ok := pk.(*rsa.PrivateKey)
			if err != nil || !ok {
				return nil, fmt.Errorf("apps[%d]: the sealed key of app %s in %s is not an RSA key", i, a.Name, path)
			}
			k = rk
		}
		out[i] = k
		save.Apps = append(save.Apps, s)
	}
	if changed {
		if err := kek.SaveFile(path, save); err != nil {
			return nil, fmt.Errorf("seal the app keys into %s: %w", path, err)
		}
	}
	return out, nil
}

// appKeyValues lists the sealed keys of an app key file for
// kek.RewrapFile.
func appKeyValues(backend string) func(*appKeyFile) []kek.Value {
	return func(f *appKeyFile) []kek.Value {
		out := make([]kek.Value, len(f.Apps))
		for i, a := range f.Apps {
			out[i] = kek.Value{AAD: appKeyAAD(backend, a.Name, a.AppID), Sealed: &f.Apps[i].Sealed}
		}
		return out
	}
}

// readAppKey reads an RSA private key in PEM (PKCS#1, as GitHub hands it
// out, or PKCS#8). It returns fromFile false, and no error, when path is
// empty or does not exist.
func readAppKey(path string) (k *rsa.PrivateKey, fromFile bool, err error) {
	if path == "" {
		return nil, false, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		return nil, false, fmt.Errorf("%s is not a PEM file", path)
	}
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		var pk any
		if pk, err = x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
			var ok bool
			if k, ok = pk.(*rsa.PrivateKey); !ok {
				err = errors.New("not an RSA key (GitHub App keys are RSA)")
			}
		}
	default:
		err = fmt.Errorf("PEM block %q is not a private key", blk.Type)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	return k, true, nil
}
