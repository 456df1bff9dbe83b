package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

// The values of REGMIRROR_STORAGE.
const (
	storageDisk = "disk"
	storageS3   = "s3"
)

// maxS3Prefix bounds REGMIRROR_S3_PREFIX so that every key under it stays
// well within S3's 1024 bytes.
const maxS3Prefix = 512

// s3Config is the bucket the settings name. Credentials are not in it: the
// cache takes them from the standard AWS chain.
func (c Config) s3Config() cache.S3Config {
	return cache.S3Config{Endpoint: c.S3Endpoint, Bucket: c.S3Bucket, Prefix: c.S3Prefix, Region: c.S3Region}
}

// validateStorage checks REGMIRROR_STORAGE and the bucket's settings without
// asking the store anything; openBucket asks it at start-up.
func (c Config) validateStorage() []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", envPrefix, key, fmt.Sprintf(format, a...)))
	}
	switch c.Storage {
	case storageDisk:
		// A bucket named while the storage stays on disk is a half-made
		// change: the mirror would quietly keep its cache on disk.
		for key, v := range map[string]string{"S3_ENDPOINT": c.S3Endpoint, "S3_BUCKET": c.S3Bucket, "S3_PREFIX": c.S3Prefix, "S3_REGION": c.S3Region} {
			if v != "" {
				bad(key, "is set, but %sSTORAGE is disk: set %sSTORAGE=s3 to keep the cache in the bucket, or unset it", envPrefix, envPrefix)
			}
		}
		return errs
	case storageS3:
	default:
		bad("STORAGE", "%q: want disk or s3", c.Storage)
		return errs
	}
	if c.S3Bucket == "" {
		bad("S3_BUCKET", "must be set with %sSTORAGE=s3", envPrefix)
	} else if _, err := cache.NewS3Objects(cache.S3Config{Bucket: c.S3Bucket}, zap.NewNop()); err != nil {
		bad("S3_BUCKET", "%v", err) // the client checks the name; it opens no connection
	}
	// The endpoint alone, with a bucket name that is valid, so that each
	// problem is reported under its own setting.
	if _, err := cache.NewS3Objects(cache.S3Config{Endpoint: c.S3Endpoint, Bucket: "regmirror"}, zap.NewNop()); err != nil {
		bad("S3_ENDPOINT", "%v", err)
	}
	if c.S3StaleUploads <= 0 {
		bad("S3_STALE_UPLOADS", "must be positive")
	}
	if !validS3Prefix(c.S3Prefix) {
		bad("S3_PREFIX", "%q: want a key prefix such as mirrors/docker-hub (at most %d bytes; no empty, . or .. parts; no control characters or backslashes)", c.S3Prefix, maxS3Prefix)
	}
	return errs
}

// validS3Prefix reports whether p is a key prefix the cache can put its keys
// under: empty, or parts separated by slashes (one at either end is
// allowed), none empty, . or .., which some stores and tools resolve as paths.
func validS3Prefix(p string) bool {
	if p == "" {
		return true
	}
	if len(p) > maxS3Prefix || !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) || strings.Contains(p, "\\") {
		return false
	}
	p = strings.TrimPrefix(strings.TrimSuffix(p, "/"), "/")
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

// checkTimeout bounds each start-up check of the bucket.
const checkTimeout = 30 * time.Second

// openBucket makes the bucket's client and checks it: a missing bucket or
// credentials the store refuses stop start-up with a message naming the
// setting to fix. A store that cannot be reached does not: the mirror
// starts, serves what its local copy holds and streams the rest, until the
// store answers. A store that ignores If-None-Match is reported.
func openBucket(ctx context.Context, cfg Config, log *zap.Logger) (*cache.S3Objects, error) {
	objs, err := cache.NewS3Objects(cfg.s3Config(), log)
	if err != nil {
		return nil, fmt.Errorf("%sSTORAGE=s3: %w", envPrefix, err) // Validate already named the setting at fault
	}
	where := fmt.Sprintf("bucket %q at %s", cfg.S3Bucket, s3EndpointName(cfg.S3Endpoint))
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	err = objs.Check(cctx)
	switch {
	case errors.Is(err, cache.ErrBucketMissing):
		return nil, fmt.Errorf("%sS3_BUCKET: %s does not exist: create it, or fix %sS3_BUCKET or %sS3_ENDPOINT: %w",
			envPrefix, where, envPrefix, envPrefix, err)
	case errors.Is(err, cache.ErrAccessDenied):
		return nil, fmt.Errorf("the object store refused the credentials for %s (%sS3_BUCKET, %sS3_ENDPOINT): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and the shared credentials file, or the instance role, and that it may list, read, write and delete in the bucket: %w",
			where, envPrefix, envPrefix, err)
	case errors.Is(err, cache.ErrStoreUnavailable):
		log.Warn("the object store does not answer at start-up: serving the local copy and streaming misses until it does",
			zap.String("bucket", cfg.S3Bucket), zap.String("endpoint", s3EndpointName(cfg.S3Endpoint)), zap.Error(err))
		return objs, nil
	case err != nil:
		return nil, fmt.Errorf("%sS3_BUCKET, %sS3_ENDPOINT: check %s: %w", envPrefix, envPrefix, where, err)
	}
	err = objs.CheckConditionalWrites(cctx)
	// What the mirror uses, without secrets: the credentials stay in the chain.
	log.Info("cache in a bucket", zap.String("endpoint", s3EndpointName(cfg.S3Endpoint)), zap.String("bucket", cfg.S3Bucket),
		zap.String("prefix", cfg.S3Prefix), zap.String("region", cfg.S3Region), zap.Bool("if_none_match", err == nil),
		zap.Stringer("max_size", cfg.MaxSize), zap.Stringer("local_max_size", cfg.LocalMaxSize))
	switch {
	case errors.Is(err, cache.ErrConditionalWritesIgnored) && cfg.fleet():
		return nil, fmt.Errorf("%sPEER_TOKEN_FILE: multi-replica mode needs an object store that honours If-None-Match: * (the replicas' leases rely on it), and %s does not: it overwrote an object written with it. Run one mirror on this bucket (unset %sPEER_TOKEN_FILE), or use a store with conditional writes (AWS S3, MinIO, versitygw, ...): %w",
			envPrefix, where, envPrefix, err)
	case errors.Is(err, cache.ErrConditionalWritesIgnored):
		// One mirror on the bucket does not need it; several replicas will.
		log.Warn("the object store ignores If-None-Match: * (it overwrote an object written with it): one mirror on this bucket works, several replicas sharing it would not be safe",
			zap.String("bucket", cfg.S3Bucket), zap.String("endpoint", s3EndpointName(cfg.S3Endpoint)), zap.Error(err))
	case err != nil:
		log.Warn("could not check whether the object store honours If-None-Match: *",
			zap.String("bucket", cfg.S3Bucket), zap.String("endpoint", s3EndpointName(cfg.S3Endpoint)), zap.Error(err))
	}
	return objs, nil
}

// s3EndpointName is the endpoint as logs and messages name it. It holds no
// credentials: validateStorage refuses an endpoint URL that carries any.
func s3EndpointName(endpoint string) string {
	if endpoint == "" {
		return "AWS S3"
	}
	return endpoint
}

// checkDataDir refuses a data dir that is the cache of another store than
// the settings name, before the bucket is asked anything. The client is
// made for its name only: it opens no connection.
func checkDataDir(cfg Config) error {
	var bucket cache.Objects
	if cfg.Storage == storageS3 {
		objs, err := cache.NewS3Objects(cfg.s3Config(), zap.NewNop())
		if err != nil {
			return fmt.Errorf("%sSTORAGE=s3: %w", envPrefix, err) // Validate already named the setting at fault
		}
		bucket = objs
	}
	return dataDirMismatch(cache.CheckDataDir(cfg.DataDir, bucket))
}

// dataDirMismatch words a cache.StoreMismatchError by the settings to
// change; other errors pass unchanged.
func dataDirMismatch(err error) error {
	var m *cache.StoreMismatchError
	if !errors.As(err, &m) {
		return err
	}
	return fmt.Errorf("%sDATA_DIR %s belongs to %s, but the settings name %s. "+
		"Set %sSTORAGE, %sS3_ENDPOINT, %sS3_BUCKET and %sS3_PREFIX back to the data dir's store, "+
		"or point %sDATA_DIR at an empty directory to cache the new one. Nothing was changed in either",
		envPrefix, m.Dir, m.Recorded, m.Configured, envPrefix, envPrefix, envPrefix, envPrefix, envPrefix)
}
