package proxy

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// negotiate picks what to answer a client's Accept with for a manifest by
// tag (by digest, the manifest named is the answer):
//
//   - a manifest the client accepts, and a Docker schema 2 image whatever it
//     accepts: what go-containerregistry's registry and distribution's
//     current forks serve, and the type every client since 2016 reads;
//   - an OCI manifest or index to a client whose Accept names no OCI type at
//     all is refused, as distribution refuses it: old Docker clients rely on
//     that 404 to fall back, and would misread an OCI body;
//   - an index the client does not take is answered with its linux/amd64
//     image, as distribution answers clients that take single images only.
func (p *Proxy) negotiate(ctx context.Context, up Upstream, rt route, m manifest, accept []string) (manifest, error) {
	if servable(accept, m.mediaType) {
		return m, nil
	}
	if isOCI(m.mediaType) && !namesOCI(accept) {
		return manifest{}, errNoOCIAccepted(rt, m.mediaType)
	}
	refuse := errManifestUnknown(fmt.Sprintf("%s:%s is a %s, which the client does not accept", rt.repo, rt.tag, m.mediaType))
	if !isIndex(m.mediaType) {
		return manifest{}, refuse
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(m.body))
	if err != nil {
		return manifest{}, refuse
	}
	var amd64 []v1.Descriptor
	for _, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
			amd64 = append(amd64, d)
		}
	}
	for _, d := range amd64 {
		if !servable(accept, string(d.MediaType)) {
			continue
		}
		res, err := p.manifestByDigest(ctx, up, rt.repo, d.Digest)
		if err != nil {
			return manifest{}, err
		}
		return res.m, nil
	}
	if len(amd64) > 0 && isOCI(string(amd64[0].MediaType)) && !namesOCI(accept) {
		return manifest{}, errNoOCIAccepted(rt, string(amd64[0].MediaType))
	}
	return manifest{}, errManifestUnknown(fmt.Sprintf("%s:%s is a %s, which the client does not accept, with no linux/amd64 image it accepts",
		rt.repo, rt.tag, m.mediaType))
}

func errNoOCIAccepted(rt route, mt string) error {
	return errManifestUnknown(fmt.Sprintf("%s:%s is an OCI manifest (%s), and the client's Accept names no OCI type: "+
		"pull it with a client that takes OCI images", rt.repo, rt.tag, mt))
}

// servable reports whether a manifest of type mt may answer a client with
// these Accept headers: when they admit it, and always for Docker schema 2.
func servable(accept []string, mt string) bool {
	return mt == typeDockerSchema || accepts(accept, mt)
}

func isOCI(mt string) bool { return strings.HasPrefix(mt, ociTypePrefix) }

const ociTypePrefix = "application/vnd.oci."

// namesOCI reports whether a client's Accept headers name any OCI type.
func namesOCI(accept []string) bool {
	return acceptsAny(accept, func(t string) bool { return strings.HasPrefix(t, ociTypePrefix) })
}

// accepts reports whether a client's Accept headers admit mt. No Accept
// header, or */*, admits anything.
func accepts(accept []string, mt string) bool {
	if len(accept) == 0 {
		return true
	}
	return acceptsAny(accept, func(t string) bool { return t == mt || t == "*/*" || t == "application/*" })
}

// acceptsAny reports whether any media type in the Accept headers matches.
func acceptsAny(accept []string, match func(t string) bool) bool {
	for _, line := range accept {
		for part := range strings.SplitSeq(line, ",") {
			t, _, _ := strings.Cut(part, ";")
			if match(strings.TrimSpace(t)) {
				return true
			}
		}
	}
	return false
}
