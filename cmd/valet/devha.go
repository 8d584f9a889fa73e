package main

import (
	"errors"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/valet-broker/valet/leases/config"
)

// devHA are the flags that make `valet dev` one replica of several on an
// etcd cluster, as `make run-ha` (deploy/dev-ha.sh) runs two of them on
// one data directory behind `valet dev lb`.
type devHA struct {
	endpoints []string
	replica   string
	publicURL string
}

func (h *devHA) register(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&h.endpoints, "etcd", nil, "run as one replica of several: the etcd client URLs (make run-ha)")
	cmd.Flags().StringVar(&h.replica, "replica", "", "with --etcd: this replica's name")
	cmd.Flags().StringVar(&h.publicURL, "public-url", "", "with --etcd: the one address of every replica (the load balancer's), valet's token issuer")
}

// apply makes cfg this replica's: its own listen address, the shared
// public URL, the etcd engine under the prefix /valet-dev/ with a short
// leader_ttl (a killed leader is replaced within 2s). Without --etcd it
// changes nothing.
func (h *devHA) apply(cfg *Config, listen string) error {
	if len(h.endpoints) == 0 {
		if h.replica != "" || h.publicURL != "" {
			return errors.New("--replica and --public-url go with --etcd")
		}
		return nil
	}
	cfg.Listen = listen
	if h.publicURL != "" {
		cfg.PublicURL = strings.TrimRight(h.publicURL, "/")
	}
	cfg.Storage.Engine = engineEtcd
	cfg.Storage.Etcd.Endpoints = h.endpoints
	cfg.Storage.Etcd.Prefix = "/valet-dev/"
	cfg.Storage.Etcd.Replica = h.replica
	cfg.Storage.Etcd.LeaderTTL = config.Duration(2 * time.Second)
	if err := cfg.Validate(); err != nil {
		return configError{err}
	}
	return nil
}
