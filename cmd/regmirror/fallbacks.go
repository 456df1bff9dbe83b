package main

import (
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// fallbackSpec is one fallback source of a registry.
type fallbackSpec struct {
	Registry string // the configured upstream it stands in for
	Name     string // its own name in logs, metrics and Warnings: host[:port][/prefix]
	URL      string
	Insecure bool
}

// resolveFallbacks reads REGMIRROR_FALLBACKS: registry=URL entries, separated
// by commas, in trying order; the URL forms are those of REGMIRROR_UPSTREAMS.
// Every registry must be a configured upstream.
func (c Config) resolveFallbacks(upstreams []upstreamSpec) ([]fallbackSpec, error) {
	known := map[string]bool{}
	for _, sp := range upstreams {
		known[sp.Name] = true
	}
	insecure := c.insecureSet()
	var out []fallbackSpec
	seen := map[string]bool{}
	pairs, err := fallbacksList.parse(c.Fallbacks)
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		reg, raw := p.name, p.value
		if !known[reg] {
			return nil, fmt.Errorf("%sFALLBACKS: entry %d: %q is not a configured upstream (%sUPSTREAM, %sUPSTREAMS)", envPrefix, p.n, reg, envPrefix, envPrefix)
		}
		ep, err := upstream.ParseEndpoint(raw)
		if err != nil {
			return nil, fmt.Errorf("%sFALLBACKS: %s: %v", envPrefix, reg, err)
		}
		name := ep.Base.Host
		if ep.Prefix != "" {
			name += "/" + ep.Prefix
		}
		if seen[reg+" "+name] {
			return nil, fmt.Errorf("%sFALLBACKS: %s: %s listed twice", envPrefix, reg, name)
		}
		seen[reg+" "+name] = true
		out = append(out, fallbackSpec{Registry: reg, Name: name, URL: raw, Insecure: insecure[ep.Base.Host]})
	}
	return out, nil
}

// insecureSet is REGMIRROR_INSECURE_REGISTRIES as a set.
func (c Config) insecureSet() map[string]bool {
	insecure := map[string]bool{}
	for _, h := range strings.Split(c.InsecureRegistries, ",") {
		if h = strings.TrimSpace(h); h != "" {
			insecure[h] = true
		}
	}
	return insecure
}

// fallbackHosts are the hosts of REGMIRROR_FALLBACKS' URLs, which
// REGMIRROR_INSECURE_REGISTRIES may name too.
func (c Config) fallbackHosts() map[string]bool {
	hosts := map[string]bool{}
	// Read what parses: a malformed list is Validate's to refuse, through
	// resolveFallbacks, with its own error rather than one about
	// REGMIRROR_INSECURE_REGISTRIES.
	pairs, _ := fallbacksList.parse(c.Fallbacks)
	for _, p := range pairs {
		if u, err := upstream.ParseURL(p.value); err == nil {
			hosts[u.Host] = true
		}
	}
	return hosts
}

// withFallbacks puts each client that has fallbacks in front of them, and
// returns the proxy's upstreams (the default first) and a function that
// closes the fallback clients.
func withFallbacks(cfg Config, clients []*upstream.Client, obs *proxy.Metrics, log *zap.Logger) ([]proxy.Upstream, func(), error) {
	specs, _, err := cfg.resolveUpstreams()
	if err != nil {
		return nil, nil, err
	}
	opt, err := upstreamOptions(cfg, obs)
	if err != nil {
		return nil, nil, err
	}
	fbs, err := cfg.resolveFallbacks(specs)
	if err != nil {
		return nil, nil, err
	}
	var made []*upstream.Client
	closeAll := func() {
		for _, c := range made {
			c.Close()
		}
	}
	byRegistry := map[string][]*upstream.Client{}
	for _, sp := range fbs {
		o := opt
		o.Name, o.Serves, o.URL, o.Insecure = sp.Name, sp.Registry, sp.URL, sp.Insecure
		c, err := upstream.New(o, log)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		made = append(made, c)
		byRegistry[sp.Registry] = append(byRegistry[sp.Registry], c)
		log.Info("fallback", zap.String("registry", sp.Registry), zap.String("fallback", sp.Name), zap.String("url", sp.URL),
			zap.Bool("insecure", sp.Insecure), zap.Bool("credentials", c.HasCredentials()))
	}
	ups := make([]proxy.Upstream, len(clients))
	for i, c := range clients {
		ups[i] = c
		if f := byRegistry[c.Name()]; len(f) > 0 {
			var o upstream.FallbackObserver
			if obs != nil {
				o = obs
			}
			ups[i] = upstream.WithFallbacks(c, f, o, log)
		}
	}
	return ups, closeAll, nil
}

// upstreamOptions are the options every upstream client shares: timeouts,
// credentials, CAs, the user agent, the observer.
func upstreamOptions(cfg Config, obs upstream.Observer) (upstream.Options, error) {
	keychain, err := upstream.LoadKeychain(cfg.CredentialsFile, cfg.DockerConfig)
	if err != nil {
		return upstream.Options{}, fmt.Errorf("upstream credentials (%sCREDENTIALS_FILE, %sDOCKER_CONFIG): %w", envPrefix, envPrefix, err)
	}
	var roots *x509.CertPool
	if cfg.CAFile != "" {
		if roots, err = loadCAs(cfg.CAFile); err != nil {
			return upstream.Options{}, fmt.Errorf("%sCA_FILE: %w", envPrefix, err)
		}
	}
	return upstream.Options{Timeout: cfg.UpstreamTimeout, Keychain: keychain, RootCAs: roots,
		UserAgent: "regmirror/" + version, Observer: obs}, nil
}
