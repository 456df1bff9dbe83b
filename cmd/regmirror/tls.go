package main

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// certReloader serves a certificate that can be replaced while the server
// runs: each TLS handshake asks for the current one, so a reload takes
// effect for new connections and leaves open ones alone.
type certReloader struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile}
	if _, err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// reload reads the files again. On an error the certificate in use stays.
func (c *certReloader) reload() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// The error is about the files' form; it never holds key material.
		return nil, fmt.Errorf("load %s and %s: %w", c.certFile, c.keyFile, err)
	}
	c.cert.Store(&cert)
	return &cert, nil
}

func (c *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cert.Load(), nil
}

// tlsConfig is the server's TLS: 1.2 or later, Go's default cipher suites
// (which leave out the weak ones), the certificate from c.
func (c *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.getCertificate}
}

// certFields describe a certificate for the logs.
func certFields(cert *tls.Certificate) []zap.Field {
	if cert.Leaf == nil {
		return nil
	}
	return []zap.Field{zap.String("subject", cert.Leaf.Subject.String()), zap.Strings("dns_names", cert.Leaf.DNSNames),
		zap.Time("not_after", cert.Leaf.NotAfter), zap.Bool("expired", time.Now().After(cert.Leaf.NotAfter))}
}
