package proxy

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// ClientAuth asks clients for HTTP Basic credentials and checks them against
// an htpasswd file of bcrypt hashes. It is safe for concurrent use; Reload
// swaps in a new file without disturbing requests in progress.
type ClientAuth struct {
	path string
	opt  ClientAuthOptions
	log  *zap.Logger

	users atomic.Pointer[htpasswd]

	// verified remembers credentials that passed bcrypt, so that a client's
	// every request does not pay for it again. Keys are an HMAC under a key
	// that lives only in this process: a memory dump does not give a fast
	// hash of a password to attack.
	macKey   [32]byte
	verified *lru.Cache[[32]byte, string] // HMAC(user, password) → the hash it matched

	// bcrypt is slow on purpose; bounding the comparisons running at once
	// keeps a burst of bad logins from taking every core from serving.
	bcryptSlots chan struct{}

	mu       sync.Mutex
	failures *lru.Cache[string, *failureWindow] // client IP → its recent failed logins
}

// ClientAuthOptions tune a ClientAuth. The zero value picks the defaults.
type ClientAuthOptions struct {
	// MaxFailures failed logins from one client IP within Window make that IP
	// get 429 for the rest of the window, without its password being checked.
	MaxFailures int           // default 5
	Window      time.Duration // default 1 minute
	// Now is the clock; tests set it, production leaves it nil.
	Now func() time.Time
}

// failureWindow counts one IP's failed logins since start; reaching the
// limit refuses the IP until until.
type failureWindow struct {
	start time.Time
	count int
	until time.Time
}

// htpasswd is one loaded htpasswd file.
type htpasswd struct {
	users map[string][]byte // user → bcrypt hash
	// dummy is compared against when the user is unknown, so that the time
	// an answer takes does not tell which users exist.
	dummy []byte
}

// Realm is the realm of the Basic challenge.
const Realm = "regmirror"

// maxLoggedUser bounds a user name in the logs: it comes from the client.
const maxLoggedUser = 128

// maxBcryptCost bounds the cost of an htpasswd entry: htpasswd -C accepts
// up to 17, and one comparison at a higher cost takes minutes.
const maxBcryptCost = 17

// NewClientAuth loads the htpasswd file at path.
func NewClientAuth(path string, opt ClientAuthOptions, log *zap.Logger) (*ClientAuth, error) {
	if opt.MaxFailures <= 0 {
		opt.MaxFailures = 5
	}
	if opt.Window <= 0 {
		opt.Window = time.Minute
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	a := &ClientAuth{path: path, opt: opt, log: log, bcryptSlots: make(chan struct{}, runtime.GOMAXPROCS(0))}
	if _, err := rand.Read(a.macKey[:]); err != nil {
		return nil, err
	}
	a.verified, _ = lru.New[[32]byte, string](1024)
	a.failures, _ = lru.New[string, *failureWindow](4096)
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload reads the htpasswd file again. On an error the users loaded before
// stay in force.
func (a *ClientAuth) Reload() error {
	f, err := os.Open(a.path)
	if err != nil {
		return err
	}
	defer f.Close()
	users, err := ParseHtpasswd(f)
	if err != nil {
		return fmt.Errorf("%s: %w", a.path, err)
	}
	if len(users) == 0 {
		return fmt.Errorf("%s: no users", a.path)
	}
	// The dummy takes the file's highest cost, so that an unknown user takes
	// at least as long as any known one.
	cost := bcrypt.MinCost
	for _, h := range users {
		if c, _ := bcrypt.Cost(h); c > cost { // ParseHtpasswd checked every cost
			cost = c
		}
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("no such user"), cost)
	if err != nil {
		return err
	}
	a.users.Store(&htpasswd{users: users, dummy: dummy})
	return nil
}

// ParseHtpasswd reads an htpasswd file: "user:hash" a line, blank lines and
// lines starting with # ignored. Only bcrypt hashes ($2y$, $2a$, $2b$, as
// htpasswd -B writes them) are accepted: the older schemes are fast to
// attack. Errors name the line and the user, never the hash.
func ParseHtpasswd(r io.Reader) (map[string][]byte, error) {
	users := map[string][]byte{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("line %d: want user:hash", n)
		}
		if strings.ContainsAny(user, " \t") || !isPrintable(user) {
			return nil, fmt.Errorf("line %d: user name has spaces or control characters", n)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("line %d: user %q listed twice", n, user)
		}
		if !strings.HasPrefix(hash, "$2y$") && !strings.HasPrefix(hash, "$2a$") && !strings.HasPrefix(hash, "$2b$") {
			return nil, fmt.Errorf("line %d: user %q: not a bcrypt hash ($2y$, $2a$ or $2b$; create it with htpasswd -B)", n, user)
		}
		cost, err := bcrypt.Cost([]byte(hash))
		if err != nil || len(hash) != 60 {
			return nil, fmt.Errorf("line %d: user %q: malformed bcrypt hash", n, user)
		}
		if cost > maxBcryptCost {
			return nil, fmt.Errorf("line %d: user %q: bcrypt cost %d is above %d", n, user, cost, maxBcryptCost)
		}
		users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return users, nil
}

func isPrintable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// authenticate checks a request's credentials and returns the user. Its
// errors are OCI errors: 401 with a Basic challenge, or 429 for a client IP
// that failed too often.
func (a *ClientAuth) authenticate(w http.ResponseWriter, r *http.Request) (string, error) {
	user, password, ok := r.BasicAuth()
	logged := user
	if len(logged) > maxLoggedUser {
		logged = logged[:maxLoggedUser] + "..."
	}
	if !ok {
		// No credentials (every client's first request) or not Basic: ask for them.
		return "", a.challenge(w)
	}
	ip := clientIP(r)
	if wait := a.blocked(ip); wait > 0 {
		return logged, &ociError{status: http.StatusTooManyRequests, code: "TOOMANYREQUESTS",
			message: "too many failed logins from this address", retryAfter: strconv.Itoa(int((wait + time.Second - 1) / time.Second))}
	}
	hp := a.users.Load()
	hash, known := hp.users[user]
	mac := a.mac(user, password)
	if v, ok := a.verified.Get(mac); ok && known && v == string(hash) {
		return logged, nil
	}
	if !known {
		hash = hp.dummy
	}
	select {
	case a.bcryptSlots <- struct{}{}:
	case <-r.Context().Done():
		return logged, r.Context().Err()
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-a.bcryptSlots
	if err == nil && known {
		a.verified.Add(mac, string(hash))
		return logged, nil
	}
	// The user name is logged to find a misconfigured client; the password never is.
	a.log.Warn("client login failed", zap.String(keyUser, logged), zap.String(keyRemote, r.RemoteAddr))
	if a.fail(ip) {
		a.log.Warn("client address refused after repeated failed logins", zap.String(keyRemote, ip),
			zap.Int("failures", a.opt.MaxFailures), zap.Duration("for", a.opt.Window))
	}
	return logged, a.challenge(w)
}

func (a *ClientAuth) challenge(w http.ResponseWriter) error {
	w.Header().Set("Www-Authenticate", `Basic realm="`+Realm+`"`)
	return &ociError{status: http.StatusUnauthorized, code: "UNAUTHORIZED", message: "authentication required"}
}

func (a *ClientAuth) mac(user, password string) [32]byte {
	m := hmac.New(sha256.New, a.macKey[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// blocked returns how long ip must still wait, or 0.
func (a *ClientAuth) blocked(ip string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	fw, ok := a.failures.Peek(ip)
	if !ok {
		return 0
	}
	return max(0, fw.until.Sub(a.opt.Now()))
}

// fail records a failed login from ip and reports whether it just reached
// the limit.
func (a *ClientAuth) fail(ip string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.opt.Now()
	fw, ok := a.failures.Get(ip)
	if !ok || now.Sub(fw.start) >= a.opt.Window {
		fw = &failureWindow{start: now}
		a.failures.Add(ip, fw)
	}
	fw.count++
	if fw.count == a.opt.MaxFailures {
		// Refused for a whole window from now, so that failures straddling
		// two windows cannot double the rate.
		fw.until = now.Add(a.opt.Window)
		return true
	}
	return false
}

// clientIP is the address a request came from, without its port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
