package detectors

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// NewNetworkName names the new-network detector
// (signals.detectors.new_network, source detector:new_network).
const NewNetworkName = "new_network"

// NewNetworkConfig is signals.detectors.new_network: an agent that holds
// live leases mints or renews from a source network it has not used
// (addresses as broker/clientip gives them, behind trusted_proxies). A
// network is the address's first IPv4Prefix (IPv6Prefix) bits. An
// agent's live leases are those minted or renewed since valet started
// whose expiry has not passed (ending one early is not seen); an agent
// without one may move to any network unremarked.
type NewNetworkConfig struct {
	Common `yaml:",inline"`
	// IPv4Prefix and IPv6Prefix are the prefix lengths of a network
	// (default 24 and 64; 0 makes all addresses one network).
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// MaxNetworks is how many networks are remembered per agent, the
	// oldest forgotten first (default 16, at least 1).
	MaxNetworks int `yaml:"max_networks"`
}

// SetDefaults sets severity medium, ipv4_prefix 24, ipv6_prefix 64 and
// max_networks 16.
func (c *NewNetworkConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityMedium)
	c.IPv4Prefix, c.IPv6Prefix, c.MaxNetworks = 24, 64, 16
}

// UnmarshalYAML decodes on top of the defaults.
func (c *NewNetworkConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain NewNetworkConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *NewNetworkConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	if c.IPv4Prefix < 0 || c.IPv4Prefix > 32 {
		errs = append(errs, fmt.Errorf("%s.ipv4_prefix must be between 0 and 32; it is %d", field, c.IPv4Prefix))
	}
	if c.IPv6Prefix < 0 || c.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("%s.ipv6_prefix must be between 0 and 128; it is %d", field, c.IPv6Prefix))
	}
	if c.MaxNetworks < 1 {
		errs = append(errs, fmt.Errorf("%s.max_networks must be at least 1; it is %d", field, c.MaxNetworks))
	}
	return errors.Join(errs...)
}

// newNetwork is the new-network detector.
type newNetwork struct {
	cfg    NewNetworkConfig
	agents *table[networkState]
}

// networkState is what the detector knows of one agent.
type networkState struct {
	nets      []netip.Prefix // oldest first
	liveUntil time.Time      // the latest expiry of its leases seen
	fired     time.Time
}

func newNewNetwork(cfg NewNetworkConfig, max int) *newNetwork {
	return &newNetwork{cfg: cfg, agents: newTable[networkState](max)}
}

func (d *newNetwork) Name() string                { return NewNetworkName }
func (d *newNetwork) Policy() broker.SignalPolicy { return d.cfg.policy() }

// Observe learns the network and the lease expiry of a mint or a renewal
// by the agent (ObserveMint, ObserveRenew with a source address), and
// fires when the network is new and the agent held a live lease.
func (d *newNetwork) Observe(o broker.Observation) []broker.Detection {
	if (o.Kind != broker.ObserveMint && o.Kind != broker.ObserveRenew) || o.SourceIP == "" {
		return nil
	}
	addr, err := netip.ParseAddr(o.SourceIP)
	if err != nil {
		return nil
	}
	addr = addr.Unmap()
	bits := d.cfg.IPv6Prefix
	if addr.Is4() {
		bits = d.cfg.IPv4Prefix
	}
	network, err := addr.Prefix(bits)
	if err != nil {
		return nil
	}
	st, _, mu := d.agents.get(o.AgentID)
	defer mu.Unlock()
	live := st.liveUntil.After(o.Time)
	if o.ExpiresAt.After(st.liveUntil) {
		st.liveUntil = o.ExpiresAt
	}
	if slices.Contains(st.nets, network) {
		return nil
	}
	known := len(st.nets)
	if len(st.nets) >= d.cfg.MaxNetworks {
		st.nets = slices.Delete(st.nets, 0, 1)
	}
	st.nets = append(st.nets, network)
	if !live || known == 0 || !d.cfg.cool(st.fired, o.Time) {
		return nil
	}
	st.fired = o.Time
	return d.cfg.detection(agent(o.AgentID),
		fmt.Sprintf("agent %s asked to %s from network %s, new to it, while it holds live leases", o.AgentID, o.Kind, network),
		map[string]string{"network": network.String(), "source_ip": o.SourceIP, "known_networks": itoa(known),
			"live_until": at(st.liveUntil), "request": o.Kind, "role": o.Role, "lease_id": o.LeaseID})
}
