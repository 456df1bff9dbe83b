package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap/zapcore"
)

const envPrefix = "REGMIRROR_"

// Config is every setting of regmirror. Each field is an environment variable
// (with the REGMIRROR_ prefix) and a flag of the same name in kebab case; a
// flag wins over the environment. The README's settings table lists them all,
// and a test keeps it honest.
type Config struct {
	Addr               string        `env:"ADDR"                envDefault:":5000"                        flag:"addr"                usage:"listen address"`
	MetricsAddr        string        `env:"METRICS_ADDR"        envDefault:""                              flag:"metrics-addr"        usage:"serve /metrics only on this address (e.g. 127.0.0.1:9090) instead of on the listen address"`
	DataDir            string        `env:"DATA_DIR"            envDefault:"$XDG_CACHE_HOME/regmirror"     flag:"data-dir"            usage:"cache directory"`
	Upstream           string        `env:"UPSTREAM"            envDefault:"https://registry-1.docker.io"  flag:"upstream"            usage:"the default upstream, which answers plain paths: a registry name from -upstreams, or a base URL (known as docker.io)"`
	Upstreams          string        `env:"UPSTREAMS"           envDefault:""                              flag:"upstreams"           usage:"more upstream registries: name=URL,name=URL (e.g. ghcr.io=https://ghcr.io; at a mirror: ghcr.io=http://regional:5000?ns=ghcr.io or ghcr.io=https://harbor.lan/ghcr-proxy)"`
	Fallbacks          string        `env:"FALLBACKS"           envDefault:""                              flag:"fallbacks"           usage:"other sources of a registry's content, tried in order when its upstream cannot be asked: registry=URL,... (e.g. docker.io=https://mirror.gcr.io)"`
	InsecureRegistries string        `env:"INSECURE_REGISTRIES" envDefault:""                              flag:"insecure-registries" usage:"upstreams whose TLS certificates are not verified: host[:port],..."`
	CAFile             string        `env:"CA_FILE"             envDefault:""                              flag:"ca-file"             usage:"PEM bundle of extra CAs trusted for upstream TLS"`
	DockerConfig       string        `env:"DOCKER_CONFIG"       envDefault:""                              flag:"docker-config"       usage:"a Docker config.json with upstream credentials (credential helpers included)"`
	CredentialsFile    string        `env:"CREDENTIALS_FILE"    envDefault:""                              flag:"credentials-file"    usage:"a file of upstream credentials, one 'registry username password' a line"`
	TagTTL             time.Duration `env:"TAG_TTL"             envDefault:"5m"                            flag:"tag-ttl"             usage:"how long a tag's answer is served before asking upstream again"`
	UpstreamTimeout    time.Duration `env:"UPSTREAM_TIMEOUT"    envDefault:"30s"                           flag:"upstream-timeout"    usage:"timeout to connect to upstream and for its answer; also how long a download may stall"`
	MaxSize            byteSize      `env:"MAX_SIZE"            envDefault:"20GiB"                         flag:"max-size"            usage:"budget of the cache on disk, or in the bucket with -storage s3 (500MB, 50GiB, ...; 0 means no limit): least recently used images are evicted past it"`
	MinFree            byteSize      `env:"MIN_FREE"            envDefault:"1GiB"                          flag:"min-free"            usage:"free space kept on the cache's filesystem (0 means no floor): eviction keeps at least this much free"`
	Storage            string        `env:"STORAGE"             envDefault:"disk"                          flag:"storage"             usage:"where the cache lives: disk (REGMIRROR_DATA_DIR) or s3 (a bucket, with a local copy of hot content in REGMIRROR_DATA_DIR)"`
	S3Endpoint         string        `env:"S3_ENDPOINT"         envDefault:""                              flag:"s3-endpoint"         usage:"the S3 store's URL, http://host:port for plain HTTP or https://host; empty means AWS for -s3-region"`
	S3Bucket           string        `env:"S3_BUCKET"           envDefault:""                              flag:"s3-bucket"           usage:"the bucket the cache lives in (with -storage s3)"`
	S3Prefix           string        `env:"S3_PREFIX"           envDefault:""                              flag:"s3-prefix"           usage:"key prefix in the bucket, so that one bucket can hold several caches"`
	S3Region           string        `env:"S3_REGION"           envDefault:""                              flag:"s3-region"           usage:"the bucket's region; empty asks the store"`
	LocalMaxSize       byteSize      `env:"LOCAL_MAX_SIZE"      envDefault:"10GiB"                         flag:"local-max-size"      usage:"with -storage s3, the budget of the local copy of hot content in the data dir (0 means no limit)"`
	S3StaleUploads     time.Duration `env:"S3_STALE_UPLOADS"    envDefault:"1h"                            flag:"s3-stale-uploads"    usage:"an incomplete multipart upload in the bucket older than this is a dead mirror's: the sweep, at start and then this often (at most once a minute), aborts it"`
	PeerTokenFile      string        `env:"PEER_TOKEN_FILE"     envDefault:""                              flag:"peer-token-file"     usage:"with -storage s3, a file holding the secret that replicas on one bucket share: setting it turns multi-replica mode on (one upstream download per blob across the replicas, the peer endpoint)"`
	PeerURL            string        `env:"PEER_URL"            envDefault:""                              flag:"peer-url"            usage:"in multi-replica mode, the URL the other replicas reach this one at (e.g. http://10.0.3.7:5000); empty means http:// and -addr, when that names a host"`
	PeerWait           time.Duration `env:"PEER_WAIT"           envDefault:"1m"                            flag:"peer-wait"           usage:"in multi-replica mode, how long a replica that cannot reach the one downloading a blob waits for it in the bucket before fetching it itself"`
	PeerLeaseTTL       time.Duration `env:"PEER_LEASE_TTL"      envDefault:"10s"                           flag:"peer-lease-ttl"      usage:"in multi-replica mode, how long a download's lease in the bucket stands without renewal (renewed every third of it): a replica that died holding one is taken over after this"`
	ReplicaName        string        `env:"REPLICA_NAME"        envDefault:""                              flag:"replica-name"        usage:"in multi-replica mode, this replica's name in the bucket's access journals and on the status page; empty means the host name (a pod's name)"`
	FleetInterval      time.Duration `env:"FLEET_INTERVAL"      envDefault:"1m"                            flag:"fleet-interval"      usage:"in multi-replica mode, how often each replica writes what it used to the bucket and looks at the fleet, and the evictor runs a pass"`
	FleetGrace         time.Duration `env:"FLEET_GRACE"         envDefault:"1h"                            flag:"fleet-grace"         usage:"in multi-replica mode, how long after any replica used an object it is kept in the bucket, whatever the budget (at least 3 times -fleet-interval)"`
	MaxDownloads       int           `env:"MAX_DOWNLOADS"       envDefault:"64"                            flag:"max-downloads"       usage:"blob downloads from upstreams at once; more wait their turn (0 means no bound)"`
	AdminAddr          string        `env:"ADMIN_ADDR"          envDefault:"127.0.0.1:5001"                flag:"admin-addr"          usage:"listen address of the admin API (pin, unpin, ls, warm, gc, verify); off turns it off"`
	AdminToken         string        `env:"ADMIN_TOKEN"         envDefault:""                              flag:"admin-token"         usage:"bearer token the admin API requires; needed when REGMIRROR_ADMIN_ADDR is not a loopback address" secret:"true"`
	ShutdownTimeout    time.Duration `env:"SHUTDOWN_TIMEOUT"    envDefault:"30s"                           flag:"shutdown-timeout"    usage:"grace period for requests in progress on SIGTERM or SIGINT"`
	LogLevel           zapcore.Level `env:"LOG_LEVEL"           envDefault:"info"                          flag:"log-level"           usage:"debug, info, warn or error"`
	LogFormat          string        `env:"LOG_FORMAT"          envDefault:"json"                          flag:"log-format"          usage:"json or console"`
	Htpasswd           string        `env:"HTPASSWD"            envDefault:""                              flag:"htpasswd"            usage:"an htpasswd file of bcrypt hashes: clients must log in (HTTP Basic) as one of its users"`
	TLSCert            string        `env:"TLS_CERT"            envDefault:""                              flag:"tls-cert"            usage:"PEM certificate (chain) to serve HTTPS with; reloaded on SIGHUP"`
	TLSKey             string        `env:"TLS_KEY"             envDefault:""                              flag:"tls-key"             usage:"PEM private key of -tls-cert; reloaded on SIGHUP"`
}

// defaultUpstreamURL is Docker Hub, the upstream of a mirror with no configuration.
const defaultUpstreamURL = "https://registry-1.docker.io"

// upstreamSpec is one configured upstream registry.
type upstreamSpec struct {
	Name     string // as clients know it: docker.io, ghcr.io, build.lan:5000
	URL      string
	Insecure bool // TLS certificate not verified
}

// resolveUpstreams turns REGMIRROR_UPSTREAM and REGMIRROR_UPSTREAMS into the
// list of upstreams (the default first) and the default's name.
//
// REGMIRROR_UPSTREAM is either a name from REGMIRROR_UPSTREAMS or a URL, which
// is then docker.io. Left at its default (Docker Hub's URL), it gives way to a
// docker.io entry in REGMIRROR_UPSTREAMS.
func (c Config) resolveUpstreams() ([]upstreamSpec, string, error) {
	var specs []upstreamSpec
	byName := map[string]int{}
	pairs, err := upstreamsList.parse(c.Upstreams)
	if err != nil {
		return nil, "", err
	}
	for _, p := range pairs {
		if !registryNameRE.MatchString(p.name) {
			return nil, "", fmt.Errorf("%sUPSTREAMS: %q is not a registry name (host or host:port)", envPrefix, p.name)
		}
		if _, err := upstream.ParseURL(p.value); err != nil {
			return nil, "", fmt.Errorf("%sUPSTREAMS: %s: %v", envPrefix, p.name, err)
		}
		byName[p.name] = len(specs)
		specs = append(specs, upstreamSpec{Name: p.name, URL: p.value})
	}
	def := c.Upstream
	if strings.Contains(def, "://") {
		if _, err := upstream.ParseURL(def); err != nil {
			return nil, "", fmt.Errorf("%sUPSTREAM: %v", envPrefix, err)
		}
		if i, ok := byName["docker.io"]; ok {
			if def != defaultUpstreamURL && def != specs[i].URL {
				return nil, "", fmt.Errorf("%sUPSTREAM is a URL, which means docker.io, but %sUPSTREAMS gives docker.io another URL: set %sUPSTREAM=docker.io", envPrefix, envPrefix, envPrefix)
			}
		} else {
			byName["docker.io"] = len(specs)
			specs = append(specs, upstreamSpec{Name: "docker.io", URL: def})
		}
		def = "docker.io"
	}
	i, ok := byName[def]
	if !ok {
		return nil, "", fmt.Errorf("%sUPSTREAM: %q is neither a URL nor a registry named in %sUPSTREAMS", envPrefix, def, envPrefix)
	}
	// The default goes first (it answers plain paths); the rest keep the
	// operator's order.
	first := specs[i]
	specs = append([]upstreamSpec{first}, slices.Delete(specs, i, i+1)...)

	insecure := c.insecureSet()
	for i := range specs {
		u, _ := upstream.ParseURL(specs[i].URL)
		if insecure[specs[i].Name] || insecure[u.Host] {
			specs[i].Insecure = true
			delete(insecure, specs[i].Name)
			delete(insecure, u.Host)
		}
	}
	fallbackHosts := c.fallbackHosts()
	for h := range insecure {
		if fallbackHosts[h] {
			continue // a fallback's, see resolveFallbacks
		}
		return nil, "", fmt.Errorf("%sINSECURE_REGISTRIES: %q is not a configured upstream (by name or URL host)", envPrefix, h)
	}
	return specs, def, nil
}

// registryNameRE is a registry as a reference names it: DNS labels and an
// optional port.
var registryNameRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?$`)

// defaultDataDir is the data dir when none is set: the user's cache
// directory, so that a plain `regmirror` works for a normal user. The systemd
// unit and the container image set /var/lib/regmirror.
func defaultDataDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "regmirror")
	}
	return "regmirror-data"
}

// loadConfig reads the environment, then the flags in args, and validates
// the result. Every problem is reported at once, each naming the setting it
// is about.
func loadConfig(args []string, environ map[string]string) (Config, error) {
	cfg, err := parseConfig("serve", args, environ)
	if err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// parseConfig reads the environment, then the flags in args, for the
// sub-command cmd (named in the usage text). It does not validate.
func parseConfig(cmd string, args []string, environ map[string]string) (Config, error) {
	opts := env.Options{Prefix: envPrefix, Environment: environ}
	// The documented default names $XDG_CACHE_HOME; the real one is computed.
	if _, set := environ[envPrefix+"DATA_DIR"]; !set {
		environ = cloneWith(environ, envPrefix+"DATA_DIR", defaultDataDir())
		opts.Environment = environ
	}
	var cfg Config
	if err := env.ParseWithOptions(&cfg, opts); err != nil {
		return cfg, namedEnvErrors(err)
	}
	fs := flag.NewFlagSet("regmirror "+cmd, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: regmirror %s [flags]\n\nEvery flag can also be set as an environment variable: -tag-ttl is %sTAG_TTL.\n\n", cmd, envPrefix)
		fs.PrintDefaults()
	}
	bindFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, nil
}

func cloneWith(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for mk, mv := range m {
		out[mk] = mv
	}
	out[k] = v
	return out
}

// bindFlags declares one flag per field of the struct cfg points to, from
// its `flag` tag, with the value already read from the environment as its
// default. A field tagged secret:"true" never shows its value in -h.
func bindFlags(fs *flag.FlagSet, cfg any) {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, usage := f.Tag.Get("flag"), f.Tag.Get("usage")
		usage += " (" + envPrefix + f.Tag.Get("env") + ")"
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			if isSecret(f) {
				fs.Var(secretFlag{p}, name, usage)
			} else {
				fs.StringVar(p, name, *p, usage)
			}
		case *time.Duration:
			fs.DurationVar(p, name, *p, usage)
		case *int:
			fs.IntVar(p, name, *p, usage)
		case *zapcore.Level:
			fs.TextVar(p, name, *p, usage)
		case *byteSize:
			fs.TextVar(p, name, *p, usage)
		default:
			panic(fmt.Sprintf("config field %s: no flag for type %T", f.Name, p))
		}
	}
}

// namedEnvErrors rewrites env's errors, which name struct fields, to name
// the environment variables an operator actually set.
func namedEnvErrors(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	keys := map[string]string{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		keys[t.Field(i).Name] = envPrefix + t.Field(i).Tag.Get("env")
	}
	var errs []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			errs = append(errs, fmt.Errorf("%s: %w", keys[pe.Name], pe.Err))
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// Validate checks the values that parse but make no sense.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", envPrefix, key, fmt.Sprintf(format, a...)))
	}
	if c.Addr == "" {
		bad("ADDR", "must not be empty")
	}
	if _, port, _ := net.SplitHostPort(c.MetricsAddr); c.MetricsAddr != "" && c.MetricsAddr == c.Addr && port != "0" { // port 0: each its own
		bad("METRICS_ADDR", "is the same as %sADDR: leave it empty to serve /metrics there", envPrefix)
	}
	if c.DataDir == "" {
		bad("DATA_DIR", "must not be empty")
	}
	if specs, _, err := c.resolveUpstreams(); err != nil {
		errs = append(errs, err)
	} else if _, err := c.resolveFallbacks(specs); err != nil {
		errs = append(errs, err)
	}
	if c.TagTTL < 0 {
		bad("TAG_TTL", "must not be negative")
	}
	if c.UpstreamTimeout <= 0 {
		bad("UPSTREAM_TIMEOUT", "must be positive")
	}
	if c.ShutdownTimeout < 0 {
		bad("SHUTDOWN_TIMEOUT", "must not be negative")
	}
	if c.MaxDownloads < 0 {
		bad("MAX_DOWNLOADS", "must not be negative")
	}
	if c.AdminAddr != "" && c.AdminAddr != "off" && c.AdminToken == "" && !loopbackAddr(c.AdminAddr) {
		bad("ADMIN_ADDR", "%q is not a loopback address: set REGMIRROR_ADMIN_TOKEN too, or anyone who reaches it can pin, warm and evict", c.AdminAddr)
	}
	errs = append(errs, c.validateStorage()...)
	errs = append(errs, c.validateFleet()...)
	errs = append(errs, c.validateFleetState()...)
	if c.LogFormat != "json" && c.LogFormat != "console" {
		bad("LOG_FORMAT", "%q: want json or console", c.LogFormat)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("TLS_CERT", "and %sTLS_KEY go together: set both to serve HTTPS, or neither", envPrefix)
	}
	return errors.Join(errs...)
}

// loopbackAddr reports whether a listen address binds only the loopback
// interface: an explicit loopback IP or localhost.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// environ returns the process environment as a map, for parseConfig.
func environ() map[string]string {
	m := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}
