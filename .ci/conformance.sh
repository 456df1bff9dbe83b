#!/usr/bin/env bash
# Installs what test/conformance_test.go runs: the OCI distribution-spec
# conformance suite (its Go runner, from the Go module proxy, pinned) as
# oci-conformance, and Debian's docker-registry (distribution 2.8), one of the
# two upstreams it is run against. Idempotent.
#
#   bash .ci/conformance.sh
#   REGMIRROR_REQUIRE_CLIENTS=1 go test ./test -run TestOCIConformance
set -euo pipefail

suite=github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111
bindir=${CONFORMANCE_BIN_DIR:-/usr/local/bin}

as_root=()
if [ "$(id -u)" -ne 0 ]; then
	as_root=(sudo)
fi
if ! command -v docker-registry >/dev/null 2>&1; then
	"${as_root[@]}" apt-get update -qq
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Use-Pty=0 docker-registry >/dev/null
fi
if ! command -v oci-conformance >/dev/null 2>&1; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	GOBIN=$tmp go install "$suite"
	"${as_root[@]}" install -m 0755 "$tmp/conformance" "$bindir/oci-conformance"
fi
echo "conformance.sh: oci-conformance and docker-registry are installed"
