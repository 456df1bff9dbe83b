package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
)

// minPeerToken is the shortest peer secret accepted: 16 bytes, as from
// `head -c 16 /dev/urandom | base64` or longer.
const minPeerToken = 16

// fleet reports whether multi-replica mode is on: REGMIRROR_PEER_TOKEN_FILE
// is set (validateFleet requires REGMIRROR_STORAGE=s3 with it).
func (c Config) fleet() bool { return c.PeerTokenFile != "" }

// validateFleet checks the multi-replica settings without reading the token.
func (c Config) validateFleet() []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", envPrefix, key, fmt.Sprintf(format, a...)))
	}
	if !c.fleet() {
		if c.PeerURL != "" {
			bad("PEER_URL", "is set, but multi-replica mode is off: set %sPEER_TOKEN_FILE too, or unset it", envPrefix)
		}
		return errs
	}
	if c.Storage != storageS3 {
		bad("PEER_TOKEN_FILE", "multi-replica mode needs the cache in a bucket the replicas share: set %sSTORAGE=s3", envPrefix)
	}
	if _, err := c.peerURL(); err != nil {
		errs = append(errs, err)
	}
	if c.PeerWait <= 0 {
		bad("PEER_WAIT", "must be positive")
	}
	if c.PeerLeaseTTL < cache.MinLeaseTTL {
		bad("PEER_LEASE_TTL", "%s: must be at least %s (the store's clock counts whole seconds)", c.PeerLeaseTTL, cache.MinLeaseTTL)
	}
	return errs
}

// peerURL is how the others reach this replica: REGMIRROR_PEER_URL, or
// http:// and REGMIRROR_ADDR when that names a host (":5000" or
// "0.0.0.0:5000" does not: every replica would name itself the same).
func (c Config) peerURL() (string, error) {
	if c.PeerURL == "" {
		host, port, err := net.SplitHostPort(c.Addr)
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) || port == "0" {
			return "", fmt.Errorf("%sPEER_URL: must be set when %sADDR (%q) names no host and port the other replicas can reach, e.g. http://10.0.3.7:5000 or http://$(POD_IP):5000",
				envPrefix, envPrefix, c.Addr)
		}
		scheme := "http"
		if c.TLSCert != "" {
			scheme = "https"
		}
		return scheme + "://" + c.Addr, nil
	}
	u, err := url.Parse(c.PeerURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%sPEER_URL: %q: want http://host:port or https://host:port, with no credentials or query", envPrefix, c.PeerURL)
	}
	return strings.TrimSuffix(c.PeerURL, "/"), nil
}

// readPeerToken reads the shared secret, without the surrounding
// whitespace a file usually ends with.
func readPeerToken(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%sPEER_TOKEN_FILE: %w", envPrefix, err)
	}
	token := strings.TrimSpace(string(raw))
	if len(token) < minPeerToken {
		return "", fmt.Errorf("%sPEER_TOKEN_FILE: %s holds %d bytes of secret, want at least %d (e.g. head -c 32 /dev/urandom | base64 > %s)",
			envPrefix, path, len(token), minPeerToken, path)
	}
	return token, nil
}

// newFleet is this replica's part of the fleet: the token, its identity in
// leases (host name and a nonce: a restarted replica is another holder), and
// the client it asks the others with.
func newFleet(cfg Config, bucket *cache.S3Objects) (*proxy.Fleet, error) {
	token, err := readPeerToken(cfg.PeerTokenFile)
	if err != nil {
		return nil, err
	}
	self, err := cfg.peerURL()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	var nonce [6]byte
	rand.Read(nonce[:])
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// The leader answers once its upstream did: as long as an upstream may take.
	tr.ResponseHeaderTimeout = 2 * cfg.UpstreamTimeout
	tr.DisableCompression = true // blobs are compressed already, and their bytes are checked as sent
	return &proxy.Fleet{
		Leases: bucket,
		Self:   cache.LeaseHolder{ID: host + "-" + hex.EncodeToString(nonce[:]), URL: self, TTL: cfg.PeerLeaseTTL},
		Token:  token,
		Client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		Wait:   cfg.PeerWait,
	}, nil
}
