// Command regmirror is a pull-through caching mirror for container registries.
//
//	regmirror [serve] [flags]
//	regmirror config [flags]
//
// With no configuration it mirrors Docker Hub on :5000.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "regmirror:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		cfg, err := loadConfig(args, environ())
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return serve(ctx, cfg)
	case "check":
		err := runCheck(args, os.Stdout)
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	case "healthcheck":
		return runHealthcheck(args)
	case "config":
		return runConfig(args, environ(), os.Stdout)
	case "version":
		fmt.Println(version)
		return nil
	case "help":
		fmt.Println(usage())
		return nil
	}
	if _, ok := adminCommands[cmd]; ok {
		err := runAdmin(cmd, args, os.Stdout, os.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	return fmt.Errorf("unknown command %q (try: regmirror help)", cmd)
}

func usage() string {
	lines := []string{
		"usage: regmirror [serve] [flags]       serve (regmirror serve -h lists the flags)",
		"       regmirror check IMAGE...      would these images pull with the upstream down?",
		"       regmirror healthcheck          is the local mirror ready? (for container health checks)",
		"       regmirror config [flags]       print every setting as serve would use it (secrets as ***)",
	}
	for _, c := range []string{"ls", "pin", "unpin", "warm", "gc", "verify"} {
		lines = append(lines, "       "+adminCommands[c])
	}
	return strings.Join(append(lines, "       regmirror version"), "\n")
}

func newLogger(cfg Config) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	if cfg.LogFormat == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	zc.Level = zap.NewAtomicLevelAt(cfg.LogLevel)
	zc.Sampling = nil // one line per request means one line per request
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	return zc.Build()
}

// serve runs the mirror until ctx ends, then shuts down in order: stop
// accepting, let requests finish within the grace period, stop downloads
// (their temp files are removed), close the store.
func serve(ctx context.Context, cfg Config) error {
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	defer log.Sync()
	// SIGHUP reloads the certificate and the htpasswd file. Asked for first,
	// so that a SIGHUP during start-up does not kill the process (its default).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var auth *proxy.ClientAuth
	if cfg.Htpasswd != "" {
		if auth, err = proxy.NewClientAuth(cfg.Htpasswd, proxy.ClientAuthOptions{}, log.Named("auth")); err != nil {
			return fmt.Errorf("%sHTPASSWD: %w", envPrefix, err)
		}
	}
	var certs *certReloader
	if cfg.TLSCert != "" {
		if certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey); err != nil {
			return fmt.Errorf("%sTLS_CERT, %sTLS_KEY: %w", envPrefix, envPrefix, err)
		}
		log.Info("certificate", certFields(certs.cert.Load())...)
	}

	st, err := cache.Open(cfg.DataDir, cache.Options{MaxSize: int64(cfg.MaxSize), MinFree: int64(cfg.MinFree)}, log.Named("cache"))
	if err != nil {
		return err
	}
	defer st.Close()
	if u := st.Usage(); u.FloorAboveFilesystem() {
		// Said once here, and on the status page and /readyz: every blob
		// will be streamed, and each says so only as it goes.
		log.Warn("REGMIRROR_MIN_FREE is not less than the size of the cache's filesystem: nothing will be stored, every blob is streamed from upstream",
			zap.Stringer("min_free", cfg.MinFree), zap.Stringer("filesystem", byteSize(u.Filesystem)),
			zap.Int64("filesystem_bytes", u.Filesystem), zap.String("data_dir", cfg.DataDir))
	}
	storeCtx, stopStore := context.WithCancel(context.Background())
	storeDone := make(chan struct{})
	go func() { st.Run(storeCtx); close(storeDone) }()
	defer func() { stopStore(); <-storeDone }()

	// Our own registry, not the global one: only what we register is exported.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := proxy.NewMetrics(reg)
	if err != nil {
		return err
	}
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      zap.NewStdLog(log.Named("metrics")),
		ErrorHandling: promhttp.ContinueOnError, // one failing collector does not blank the scrape
	})

	clients, err := newUpstreams(cfg, metrics, log.Named("upstream"))
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	ups := make([]proxy.Upstream, len(clients))
	for i, c := range clients {
		ups[i] = c
	}
	opts := proxy.Options{
		TagTTL:          cfg.TagTTL,
		UpstreamTimeout: cfg.UpstreamTimeout,
		MaxDownloads:    cfg.MaxDownloads,
		Metrics:         metrics,
		Auth:            auth,
	}
	if cfg.MetricsAddr == "" {
		opts.MetricsHandler = metricsHandler
	}
	px, err := proxy.New(st, ups, opts, log.Named("proxy"))
	if err != nil {
		return err
	}
	defer px.Close()

	var metricsSrv *http.Server
	metricsErr := make(chan error, 1)
	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("%sMETRICS_ADDR: %w", envPrefix, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET "+proxy.MetricsPath, metricsHandler)
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log.Named("http"))}
		log.Info("serving metrics", zap.String("addr", mln.Addr().String()))
		go func() { metricsErr <- metricsSrv.Serve(mln) }()
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("%sADDR: %w", envPrefix, err)
	}
	srv := &http.Server{
		Handler:           px,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
		// No WriteTimeout: it would cut long blob streams.
	}
	if certs != nil {
		srv.TLSConfig = certs.tlsConfig()
	}
	var aln net.Listener
	adminAddr := ""
	if cfg.AdminAddr != "" && cfg.AdminAddr != "off" {
		if aln, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("%sADMIN_ADDR: %w", envPrefix, err)
		}
		adminAddr = aln.Addr().String()
	}
	log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("admin_addr", adminAddr),
		zap.Bool("tls", certs != nil), zap.Bool("client_auth", auth != nil), zap.String("data_dir", cfg.DataDir),
		zap.String("default_upstream", ups[0].Name()), zap.Duration("tag_ttl", cfg.TagTTL),
		zap.Stringer("max_size", cfg.MaxSize), zap.Stringer("min_free", cfg.MinFree), zap.String("version", version))

	errc := make(chan error, 2)
	go func() {
		if certs != nil {
			errc <- srv.ServeTLS(ln, "", "") // the certificate comes from TLSConfig.GetCertificate
			return
		}
		errc <- srv.Serve(ln)
	}()
	if aln != nil {
		admin := &http.Server{Handler: px.Admin(cfg.AdminToken), ReadHeaderTimeout: 10 * time.Second, ErrorLog: srv.ErrorLog}
		go func() { errc <- admin.Serve(aln) }()
		defer admin.Close() // warm-ups and verify in progress are cut; nothing they do is lost
	}
	stopReload := reloadOnHUP(hup, certs, auth, log)
	defer stopReload()
	// systemd (Type=notify): ready once the store is open and the listener is
	// up; no-ops without NOTIFY_SOCKET.
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("tell systemd we are ready", zap.Error(err))
	}
	stopWatchdog := watchdog(st, log)
	defer stopWatchdog()
	select {
	case err := <-errc:
		return err
	case err := <-metricsErr:
		return fmt.Errorf("metrics listener: %w", err)
	case <-ctx.Done():
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	log.Info("shutting down", zap.Duration("grace", cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if metricsSrv != nil {
		metricsSrv.Shutdown(sctx) // scrapes are short; Close below cuts any left
		metricsSrv.Close()
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still running after the grace period were cut", zap.Error(err))
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// newUpstreams builds one client per configured upstream, the default first.
func newUpstreams(cfg Config, obs upstream.Observer, log *zap.Logger) ([]*upstream.Client, error) {
	specs, _, err := cfg.resolveUpstreams()
	if err != nil {
		return nil, err
	}
	keychain, err := upstream.LoadKeychain(cfg.CredentialsFile, cfg.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("upstream credentials (%sCREDENTIALS_FILE, %sDOCKER_CONFIG): %w", envPrefix, envPrefix, err)
	}
	var roots *x509.CertPool
	if cfg.CAFile != "" {
		if roots, err = loadCAs(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("%sCA_FILE: %w", envPrefix, err)
		}
	}
	var ups []*upstream.Client
	for _, sp := range specs {
		c, err := upstream.New(upstream.Options{
			Name:      sp.Name,
			URL:       sp.URL,
			Timeout:   cfg.UpstreamTimeout,
			Keychain:  keychain,
			Insecure:  sp.Insecure,
			RootCAs:   roots,
			UserAgent: "regmirror/" + version,
			Observer:  obs,
		}, log)
		if err != nil {
			for _, u := range ups {
				u.Close()
			}
			return nil, err
		}
		log.Info("upstream", zap.String("registry", sp.Name), zap.String("url", sp.URL),
			zap.Bool("insecure", sp.Insecure), zap.Bool("credentials", c.HasCredentials()))
		ups = append(ups, c)
	}
	return ups, nil
}

// loadCAs is the system's CA pool plus the PEM certificates in file.
func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// reloadOnHUP reloads the certificate and the htpasswd file on each SIGHUP.
// A file that does not load is logged and the one in use stays. It returns
// a function that stops it.
func reloadOnHUP(hup <-chan os.Signal, certs *certReloader, auth *proxy.ClientAuth, log *zap.Logger) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-hup:
			}
			if certs == nil && auth == nil {
				log.Info("SIGHUP: nothing to reload (no TLS certificate, no htpasswd file)")
				continue
			}
			if certs != nil {
				if cert, err := certs.reload(); err != nil {
					log.Error("SIGHUP: the new certificate does not load; still serving the old one", zap.Error(err))
				} else {
					log.Info("SIGHUP: certificate reloaded", certFields(cert)...)
				}
			}
			if auth != nil {
				if err := auth.Reload(); err != nil {
					log.Error("SIGHUP: the htpasswd file does not load; its old users stay", zap.Error(err))
				} else {
					log.Info("SIGHUP: htpasswd file reloaded")
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// watchdog pings systemd's watchdog (WatchdogSec=) at half its interval
// while the store is healthy, so a mirror whose store broke is restarted.
// It returns a function that stops it.
func watchdog(st *cache.Store, log *zap.Logger) (stop func()) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := st.Healthy(); err != nil {
					log.Error("store unhealthy: not pinging the watchdog", zap.Error(err))
					continue
				}
				daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}
	}()
	return func() { close(done); <-finished }
}

// runHealthcheck is `regmirror healthcheck [-mirror URL]`, for a container's
// HEALTHCHECK (the image has no shell or curl): exit 0 when the mirror
// answers its /readyz with 200.
func runHealthcheck(args []string) error {
	mirror, err := parseMirror(flag.NewFlagSet("healthcheck", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	resp, err := mirrorClient(mirror, 5*time.Second).Get(mirror + proxy.ReadyPath)
	if err != nil {
		return fmt.Errorf("unhealthy: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("unhealthy: %s answered %s", proxy.ReadyPath, resp.Status)
	}
	return nil
}
