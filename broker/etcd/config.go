package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/valet-broker/valet/leases/config"
)

// Config is the storage.etcd section of the configuration file: where the
// cluster is and how valet talks to it.
type Config struct {
	// Endpoints are the client URLs of the cluster's members
	// (https://etcd-0:2379, ...); required when storage.engine is etcd.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the key prefix of this valet's data (default "/valet/");
	// it must start and end with "/".
	Prefix string `yaml:"prefix"`
	// TLS is the client's TLS (a CA to trust; a certificate and key for
	// client authentication); absent for plain http endpoints.
	TLS *TLSConfig `yaml:"tls"`
	// Username and PasswordFile authenticate with etcd's own auth (the
	// file holds the password; never the configuration file).
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// DialTimeout bounds connecting at start (default 5s, positive).
	DialTimeout config.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds one etcd request (default 5s, positive); a
	// request that runs out is answered 503.
	RequestTimeout config.Duration `yaml:"request_timeout"`
	// LeaderTTL is how long the leader's session outlives its last
	// keep-alive (default 10s, whole seconds, at least 1s): a leader that
	// dies stops leading after at most this long, and another replica
	// takes the background duties over.
	LeaderTTL config.Duration `yaml:"leader_ttl"`
	// Replica names this replica in the election and its marker key
	// (default: the host name).
	Replica string `yaml:"replica"`
}

// TLSConfig is the client TLS of storage.etcd.tls.
type TLSConfig struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// SetDefaults sets the defaults of absent keys (see Config).
func (c *Config) SetDefaults() {
	c.Prefix = "/valet/"
	c.DialTimeout = config.Duration(5 * time.Second)
	c.RequestTimeout = config.Duration(5 * time.Second)
	c.LeaderTTL = config.Duration(10 * time.Second)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Config
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the section; key is its path ("storage.etcd") and
// every error names the full key. required says whether the engine is
// etcd (then endpoints are needed).
func (c *Config) Validate(key string, required bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if required && len(c.Endpoints) == 0 {
		add("%s.endpoints must not be empty when storage.engine is etcd", key)
	}
	for i, ep := range c.Endpoints {
		if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
			add("%s.endpoints[%d] must be an http:// or https:// URL; it is %q", key, i, ep)
		}
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") || len(c.Prefix) < 2 {
		add("%s.prefix must start and end with / and name something between; it is %q", key, c.Prefix)
	}
	if c.DialTimeout <= 0 {
		add("%s.dial_timeout must be positive; it is %s", key, c.DialTimeout)
	}
	if c.RequestTimeout <= 0 {
		add("%s.request_timeout must be positive; it is %s", key, c.RequestTimeout)
	}
	if c.LeaderTTL < config.Duration(time.Second) || c.LeaderTTL.D()%time.Second != 0 {
		add("%s.leader_ttl must be a whole number of seconds, at least 1s; it is %s", key, c.LeaderTTL)
	}
	if (c.Username == "") != (c.PasswordFile == "") {
		add("%s.username and %s.password_file go together", key, key)
	}
	if t := c.TLS; t != nil && (t.CertFile == "") != (t.KeyFile == "") {
		add("%s.tls.cert_file and %s.tls.key_file go together", key, key)
	}
	return errors.Join(errs...)
}

// Client connects to the cluster as the section says.
func (c *Config) Client() (*clientv3.Client, error) {
	cc := clientv3.Config{Endpoints: c.Endpoints, DialTimeout: c.DialTimeout.D(), Username: c.Username}
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("storage.etcd.password_file: %w", err)
		}
		cc.Password = strings.TrimSpace(string(b))
	}
	if t := c.TLS; t != nil {
		info := transport.TLSInfo{TrustedCAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("storage.etcd.tls: %w", err)
		}
		tc.MinVersion = tls.VersionTLS12
		cc.TLS = tc
	}
	cc.DialOptions = append(cc.DialOptions, grpc.WithUnaryInterceptor(retryNoLeader))
	cl, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("storage.etcd: connect to %v: %w", c.Endpoints, err)
	}
	return cl, nil
}

// retryNoLeader sends a request again when the member it reached refused
// it for having no leader (the store asks for one on every request,
// clientv3.WithRequireLeader: a member cut off from the others refuses
// at once instead of holding the request until it times out). The
// refusal comes before the request runs, so sending it again is safe
// for a write too, and the client's balancer sends it to the next
// member; the client retries only reads on its own.
func retryNoLeader(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	for attempt := 1; attempt < 10 && rpctypes.Error(err) == rpctypes.ErrNoLeader; attempt++ {
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 10 * time.Millisecond):
		}
		err = invoker(ctx, method, req, reply, cc, opts...)
	}
	return err
}
