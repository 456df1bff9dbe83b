package upstream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Keychain holds the credentials an operator gave us: a plain credentials
// file and a Docker config.json (with its credential helpers). The file wins
// over config.json for a registry named in both. Registries in neither are
// pulled from anonymously.
type Keychain struct {
	file   map[string]authn.AuthConfig
	docker *configfile.ConfigFile
}

// LoadKeychain reads a credentials file and a Docker config.json; either
// path may be empty. Errors name the file and line, never a secret.
func LoadKeychain(credentialsFile, dockerConfig string) (*Keychain, error) {
	k := &Keychain{}
	if credentialsFile != "" {
		f, err := os.Open(credentialsFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if k.file, err = ParseCredentials(f); err != nil {
			return nil, fmt.Errorf("%s: %w", credentialsFile, err)
		}
	}
	if dockerConfig != "" {
		f, err := os.Open(dockerConfig)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if k.docker, err = config.LoadFromReader(f); err != nil {
			return nil, fmt.Errorf("%s: not a Docker config file", dockerConfig)
		}
	}
	return k, nil
}

// ParseCredentials reads the credentials file format: one registry a line,
// "registry username password", separated by spaces; blank lines and lines
// starting with # are ignored. A password cannot contain spaces: put such
// credentials in a Docker config.json instead.
func ParseCredentials(r io.Reader) (map[string]authn.AuthConfig, error) {
	out := map[string]authn.AuthConfig{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want \"registry username password\"", n)
		}
		if _, dup := out[f[0]]; dup {
			return nil, fmt.Errorf("line %d: registry %s listed twice", n, f[0])
		}
		out[f[0]] = authn.AuthConfig{Username: f[1], Password: f[2]}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// Resolve implements authn.Keychain for the host credentials are sent to
// ("ghcr.io", "regional.lan:5000"; "docker.io" for any of Docker Hub's hosts),
// never for a registry's name: a mirror serving docker.io is not Docker Hub.
func (k *Keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	reg := r.RegistryStr()
	if c, ok := k.file[reg]; ok {
		return authn.FromConfig(c), nil
	}
	if k.docker == nil {
		return authn.Anonymous, nil
	}
	key := reg
	if reg == "docker.io" || reg == name.DefaultRegistry {
		key = authn.DefaultAuthKey // the key `docker login` writes for Docker Hub
	}
	c, err := k.docker.GetAuthConfig(key)
	if err != nil {
		// A credential helper failed; its message is about the helper, not a secret.
		return nil, errors.New("the Docker config's credential helper failed")
	}
	c.ServerAddress = ""
	if c == (types.AuthConfig{}) {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: c.Username, Password: c.Password, Auth: c.Auth,
		IdentityToken: c.IdentityToken, RegistryToken: c.RegistryToken,
	}), nil
}

// registryName is an authn.Resource naming a registry as clients know it.
type registryName string

func (r registryName) String() string      { return string(r) }
func (r registryName) RegistryStr() string { return string(r) }

// anonymous is the keychain of an upstream without credentials.
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }
