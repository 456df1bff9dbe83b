// Command bare is bench/run.sh's reference for manifest answers: what Go's
// net/http serves at all on this machine when a handler does nothing but
// answer a manifest by tag (or digest) with fixed headers from memory. The
// mirror's HEAD by tag is measured against it, with the same load, in the
// same run.
//
//	bare -addr 127.0.0.1:5002 -repo library/small -tag latest -manifest FILE -type application/vnd.docker.distribution.manifest.v2+json
//
// It answers GET and HEAD of /v2/ (200, for readiness checks) and of
// /v2/REPO/manifests/TAG and /v2/REPO/manifests/DIGEST (the manifest FILE,
// DIGEST its sha256) with Content-Type, Content-Length, Docker-Content-Digest
// and Docker-Distribution-Api-Version; anything else gets a 404.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5002", "listen address")
	repo := flag.String("repo", "library/small", "repository the manifest is served under")
	tag := flag.String("tag", "latest", "tag the manifest is served by")
	file := flag.String("manifest", "", "the manifest to serve (required)")
	mediaType := flag.String("type", "application/vnd.docker.distribution.manifest.v2+json", "its media type")
	flag.Parse()
	if *file == "" {
		log.Fatal("bare: -manifest is required")
	}
	body, err := os.ReadFile(*file)
	if err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256(body)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	// The header values are built once; each answer shares them (net/http
	// only reads them), as a handler tuned for one answer would.
	headers := http.Header{
		"Content-Type":                    {*mediaType},
		"Content-Length":                  {strconv.Itoa(len(body))},
		"Docker-Content-Digest":           {digest},
		"Docker-Distribution-Api-Version": {"registry/2.0"},
	}
	base := "/v2/" + *repo + "/manifests/"
	byTag, byDigest := base+*tag, base+digest
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		switch r.URL.Path {
		case "/v2/":
			w.Header()["Docker-Distribution-Api-Version"] = headers["Docker-Distribution-Api-Version"]
			w.WriteHeader(http.StatusOK)
		case byTag, byDigest:
			wh := w.Header()
			for k, v := range headers {
				wh[k] = v
			}
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(body)
			}
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	srv := &http.Server{Addr: *addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
