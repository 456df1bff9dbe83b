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
	"golang.org/x/sync/errgroup"
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
		"       regmirror check IMAGE...      would these images pull with the upstream down? (-referrers: with their signatures, SBOMs)",
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

// serve runs the mirror until ctx ends: build the components, open the
// listeners, run the servers until a signal, then close the components.
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

	m, err := newMirror(cfg, log)
	if err != nil {
		return err
	}
	defer m.Close()
	ls, err := listen(cfg)
	if err != nil {
		return err
	}
	if ls.metrics != nil {
		log.Info("serving metrics", zap.String("addr", ls.metrics.Addr().String()))
	}
	log.Info("listening", zap.String("addr", ls.main.Addr().String()), zap.String("admin_addr", ls.adminAddr()),
		zap.Bool("tls", m.certs != nil), zap.Bool("client_auth", m.auth != nil), zap.String("data_dir", cfg.DataDir),
		zap.String("storage", cfg.Storage), zap.String("default_upstream", m.clients[0].Name()), zap.Duration("tag_ttl", cfg.TagTTL),
		zap.Stringer("max_size", cfg.MaxSize), zap.Stringer("min_free", cfg.MinFree), zap.String("version", version))
	if err := m.run(ctx, ls, hup); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// mirror is the running components: the store, the upstream clients, the
// proxy, client authentication and the certificate.
type mirror struct {
	cfg     Config
	log     *zap.Logger
	auth    *proxy.ClientAuth
	certs   *certReloader
	store   *cache.Store
	clients []*upstream.Client
	proxy   *proxy.Proxy
	metrics http.Handler
	closers []func() // in the order they were made; Close runs them backwards
}

// newMirror builds the components, in dependency order. On an error it
// closes what it had built.
func newMirror(cfg Config, log *zap.Logger) (_ *mirror, err error) {
	m := &mirror{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if cfg.Htpasswd != "" {
		if m.auth, err = proxy.NewClientAuth(cfg.Htpasswd, proxy.ClientAuthOptions{}, log.Named("auth")); err != nil {
			return nil, fmt.Errorf("%sHTPASSWD: %w", envPrefix, err)
		}
	}
	if cfg.TLSCert != "" {
		if m.certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("%sTLS_CERT, %sTLS_KEY: %w", envPrefix, envPrefix, err)
		}
		log.Info("certificate", certFields(m.certs.cert.Load())...)
	}

	if err := checkDataDir(cfg); err != nil {
		return nil, err
	}
	opt := cache.Options{MaxSize: int64(cfg.MaxSize), MinFree: int64(cfg.MinFree)}
	var bucket *cache.S3Objects
	if cfg.Storage == storageS3 {
		if bucket, err = openBucket(context.Background(), cfg, log.Named("s3")); err != nil {
			return nil, err
		}
		opt.Bucket, opt.LocalMaxSize, opt.StaleUploads = bucket, int64(cfg.LocalMaxSize), cfg.S3StaleUploads
		opt.Shared = cfg.fleet()
	}
	if cfg.fleet() {
		if opt.Fleet, err = cfg.fleetStore(); err != nil {
			return nil, err
		}
	}
	if m.store, err = cache.Open(cfg.DataDir, opt, log.Named("cache")); err != nil {
		return nil, dataDirMismatch(err)
	}
	m.closers = append(m.closers, func() { m.store.Close() })
	if u := m.store.Usage(); u.FloorAboveFilesystem() {
		// Said once here, and on the status page and /readyz: every blob
		// will be streamed, and each says so only as it goes.
		log.Warn("REGMIRROR_MIN_FREE is not less than the size of the cache's filesystem: nothing will be stored, every blob is streamed from upstream",
			zap.Stringer("min_free", cfg.MinFree), zap.Stringer("filesystem", byteSize(u.Filesystem)),
			zap.Int64("filesystem_bytes", u.Filesystem), zap.String("data_dir", cfg.DataDir))
	}
	storeCtx, stopStore := context.WithCancel(context.Background())
	storeDone := make(chan struct{})
	go func() { m.store.Run(storeCtx); close(storeDone) }()
	m.closers = append(m.closers, func() { stopStore(); <-storeDone })

	// Our own registry, not the global one: only what we register is exported.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := proxy.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	m.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      zap.NewStdLog(log.Named("metrics")),
		ErrorHandling: promhttp.ContinueOnError, // one failing collector does not blank the scrape
	})

	if m.clients, err = newUpstreams(cfg, metrics, log.Named("upstream")); err != nil {
		return nil, err
	}
	m.closers = append(m.closers, func() {
		for _, c := range m.clients {
			c.Close()
		}
	})
	ups, closeFallbacks, err := withFallbacks(cfg, m.clients, metrics, log.Named("upstream"))
	if err != nil {
		return nil, err
	}
	m.closers = append(m.closers, closeFallbacks)
	popt := proxy.Options{
		TagTTL:          cfg.TagTTL,
		UpstreamTimeout: cfg.UpstreamTimeout,
		MaxDownloads:    cfg.MaxDownloads,
		DataDir:         cfg.DataDir, // the status page's series, beside the cache
		Metrics:         metrics,
		Auth:            m.auth,
	}
	if cfg.MetricsAddr == "" {
		popt.MetricsHandler = m.metrics
	}
	if cfg.fleet() {
		if popt.Fleet, err = newFleet(cfg, bucket); err != nil {
			return nil, err
		}
		log.Info("multi-replica mode", zap.String("replica", popt.Fleet.Self.ID), zap.String("peer_url", popt.Fleet.Self.URL),
			zap.Duration("lease_ttl", cfg.PeerLeaseTTL), zap.Duration("peer_wait", cfg.PeerWait))
	}
	if m.proxy, err = proxy.New(m.store, ups, popt, log.Named("proxy")); err != nil {
		return nil, err
	}
	m.closers = append(m.closers, m.proxy.Close)
	return m, nil
}

// Close stops the components in the reverse order of their making: the
// downloads still running (their temp files are removed), the upstream
// clients' probes, the store's background work, then the store itself.
// Call it after the servers have stopped.
func (m *mirror) Close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}

// listeners are the sockets serve listens on; metrics and admin are nil
// when not configured.
type listeners struct {
	main, metrics, admin net.Listener
}

// listen opens every configured listener, or none.
func listen(cfg Config) (ls listeners, err error) {
	defer func() {
		if err != nil {
			ls.close()
		}
	}()
	if cfg.MetricsAddr != "" {
		if ls.metrics, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return ls, fmt.Errorf("%sMETRICS_ADDR: %w", envPrefix, err)
		}
	}
	if ls.main, err = net.Listen("tcp", cfg.Addr); err != nil {
		return ls, fmt.Errorf("%sADDR: %w", envPrefix, err)
	}
	if cfg.AdminAddr != "" && cfg.AdminAddr != "off" {
		if ls.admin, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			return ls, fmt.Errorf("%sADMIN_ADDR: %w", envPrefix, err)
		}
	}
	return ls, nil
}

func (ls listeners) close() {
	for _, l := range []net.Listener{ls.main, ls.metrics, ls.admin} {
		if l != nil {
			l.Close()
		}
	}
}

func (ls listeners) adminAddr() string {
	if ls.admin == nil {
		return ""
	}
	return ls.admin.Addr().String()
}

// run serves on ls until ctx ends or a server fails, then shuts down in
// order: stop accepting (metrics first), let requests finish within the
// grace period and cut the rest, then cut the admin API's.
func (m *mirror) run(ctx context.Context, ls listeners, hup <-chan os.Signal) error {
	errLog := zap.NewStdLog(m.log.Named("http"))
	srv := &http.Server{
		Handler:           m.proxy,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
		// No WriteTimeout: it would cut long blob streams.
	}
	if m.certs != nil {
		srv.TLSConfig = m.certs.tlsConfig()
	}
	var metricsSrv, adminSrv *http.Server
	if ls.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("GET "+proxy.MetricsPath, m.metrics)
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	}
	if ls.admin != nil {
		adminSrv = &http.Server{Handler: m.proxy.Admin(m.cfg.AdminToken), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if m.certs != nil {
			return served(srv.ServeTLS(ls.main, "", "")) // the certificate comes from TLSConfig.GetCertificate
		}
		return served(srv.Serve(ls.main))
	})
	if metricsSrv != nil {
		g.Go(func() error {
			if err := served(metricsSrv.Serve(ls.metrics)); err != nil {
				return fmt.Errorf("metrics listener: %w", err)
			}
			return nil
		})
	}
	if adminSrv != nil {
		g.Go(func() error { return served(adminSrv.Serve(ls.admin)) })
	}
	g.Go(func() error {
		<-gctx.Done()
		daemon.SdNotify(false, daemon.SdNotifyStopping)
		m.log.Info("shutting down", zap.Duration("grace", m.cfg.ShutdownTimeout))
		sctx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
		defer cancel()
		if metricsSrv != nil {
			metricsSrv.Shutdown(sctx) // scrapes are short; Close cuts any left
			metricsSrv.Close()
		}
		if err := srv.Shutdown(sctx); err != nil {
			m.log.Warn("requests still running after the grace period were cut", zap.Error(err))
			srv.Close()
		}
		if adminSrv != nil {
			adminSrv.Close() // warm-ups and verify in progress are cut; nothing they do is lost
		}
		return nil
	})

	stopReload := reloadOnHUP(hup, m.certs, m.auth, m.log)
	defer stopReload()
	// systemd (Type=notify): ready once the store is open and the listener is
	// up; no-ops without NOTIFY_SOCKET.
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		m.log.Warn("tell systemd we are ready", zap.Error(err))
	}
	stopWatchdog := watchdog(m.store, m.log)
	defer stopWatchdog()
	return g.Wait()
}

// served is a server's Serve error with the one of a server shut down on
// purpose left out.
func served(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// newUpstreams builds one client per configured upstream, the default first.
func newUpstreams(cfg Config, obs upstream.Observer, log *zap.Logger) ([]*upstream.Client, error) {
	specs, _, err := cfg.resolveUpstreams()
	if err != nil {
		return nil, err
	}
	opt, err := upstreamOptions(cfg, obs)
	if err != nil {
		return nil, err
	}
	var ups []*upstream.Client
	for _, sp := range specs {
		o := opt
		o.Name, o.URL, o.Insecure = sp.Name, sp.URL, sp.Insecure
		c, err := upstream.New(o, log)
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
