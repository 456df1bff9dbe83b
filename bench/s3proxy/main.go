// Command s3proxy stands between bench/s3.sh's mirrors and its S3 server:
// it holds each request back for -delay before passing it on, so that a
// bucket on loopback costs what one a few milliseconds away would, and it
// counts the requests by S3 operation.
//
//	s3proxy -listen 127.0.0.1:7071 -target 127.0.0.1:7070 -delay 5ms -control 127.0.0.1:7072
//
// The Host header passes unchanged, so SigV4 signatures made for the proxy's
// address verify at the server. On -control, GET /counts answers the counts
// since the last POST /reset as JSON ({"GetObject":3,"PutObject":1,…}).
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("s3proxy: ")
	listen := flag.String("listen", "127.0.0.1:7071", "address to listen on")
	target := flag.String("target", "127.0.0.1:7070", "host:port of the S3 server (plain HTTP)")
	delay := flag.Duration("delay", 5*time.Millisecond, "how long each request is held before it is passed on")
	control := flag.String("control", "127.0.0.1:7072", "address of GET /counts and POST /reset")
	flag.Parse()

	c := &counts{n: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: *target})
	rp.FlushInterval = -1 // stream bodies as they come
	rp.ErrorLog = log.Default()
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(operation(r))
		time.Sleep(*delay)
		rp.ServeHTTP(w, r)
	})
	ctl := http.NewServeMux()
	ctl.HandleFunc("GET /counts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c.snapshot())
	})
	ctl.HandleFunc("POST /reset", func(w http.ResponseWriter, r *http.Request) { c.reset() })
	go func() {
		log.Fatal((&http.Server{Addr: *control, Handler: ctl, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
	}()
	log.Fatal((&http.Server{Addr: *listen, Handler: proxy, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
}

// counts is requests by operation.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(op string) { c.mu.Lock(); c.n[op]++; c.mu.Unlock() }

func (c *counts) reset() { c.mu.Lock(); c.n = map[string]int{}; c.mu.Unlock() }

func (c *counts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// operation names the S3 API call of a path-style request (/bucket/key?…)
// as AWS's documentation does.
func operation(r *http.Request) string {
	q := r.URL.Query()
	has := func(k string) bool { _, ok := q[k]; return ok }
	_, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	object := key != "" // minio-go asks for /bucket/ on bucket calls
	switch r.Method {
	case http.MethodGet:
		switch {
		case has("uploads"):
			return "ListMultipartUploads"
		case has("uploadId"):
			return "ListParts"
		case has("location"):
			return "GetBucketLocation"
		case !object && q.Get("list-type") == "2":
			return "ListObjectsV2"
		case !object:
			return "ListObjects"
		case r.Header.Get("Range") != "":
			return "GetObject (Range)"
		}
		return "GetObject"
	case http.MethodHead:
		if object {
			return "HeadObject"
		}
		return "HeadBucket"
	case http.MethodPut:
		switch {
		case has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "":
			return "UploadPartCopy"
		case has("partNumber"):
			return "UploadPart"
		case r.Header.Get("X-Amz-Copy-Source") != "":
			return "CopyObject"
		case !object:
			return "CreateBucket"
		}
		return "PutObject"
	case http.MethodPost:
		switch {
		case has("uploads"):
			return "CreateMultipartUpload"
		case has("uploadId"):
			return "CompleteMultipartUpload"
		case has("delete"):
			return "DeleteObjects"
		}
	case http.MethodDelete:
		switch {
		case has("uploadId"):
			return "AbortMultipartUpload"
		case object:
			return "DeleteObject"
		}
		return "DeleteBucket"
	}
	return r.Method + " other"
}
