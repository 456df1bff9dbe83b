#!/usr/bin/env bash
# Installs the container clients that test/clients_test.go drives, from
# Debian's packages: skopeo, podman, containerd (which ships ctr) and the
# Docker daemon; Chromium, which test/status_test.go renders the status
# page in; distribution's registry (docker-registry), which test/tiers_test.go
# runs as a regional proxy; and versitygw, the S3 server cache/s3_test.go runs
# against, built with `go install`. Idempotent: it does nothing when every
# binary is there.
#
#   bash .ci/clients.sh
#   REGMIRROR_REQUIRE_CLIENTS=1 go test ./test -run TestClients
#
# The variable makes a missing client fail the test instead of skipping it.
# crane is not installed here: the test builds it with `go install`.
#
# A fresh install (apt-get update included) takes about 13-19 s on the
# 2-core CI machine; with everything present, the script returns at once.
set -euo pipefail

# versitygw has no Debian package: built from source, about 3 minutes on 2
# cores the first time (the module cache makes a rebuild cheaper). Into
# /usr/local/bin, so it is on PATH for the tests.
if ! command -v versitygw >/dev/null 2>&1; then
	gobin=/usr/local/bin
	if [ ! -w "$gobin" ]; then
		gobin=$(go env GOPATH)/bin
		echo "clients.sh: $gobin/versitygw must be on PATH for cache/s3_test.go" >&2
	fi
	echo "clients.sh: building versitygw v1.8.0 into $gobin"
	start=$SECONDS
	GOBIN=$gobin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
	echo "clients.sh: built versitygw in $((SECONDS - start))s"
else
	echo "clients.sh: versitygw is already installed"
fi

# binary → the Debian package that ships it. docker.io depends on containerd,
# runc and tini; podman on conmon and containers-common (and crun | runc,
# which runc satisfies). Recommends are left out: none is needed to pull.
declare -A pkg_of=(
	[skopeo]=skopeo
	[podman]=podman
	[containerd]=containerd
	[ctr]=containerd
	[runc]=runc
	[dockerd]=docker.io
	[/usr/bin/docker]=docker.io
	[chromium]=chromium
	[docker-registry]=docker-registry
)

missing=()
for bin in "${!pkg_of[@]}"; do
	if ! command -v "$bin" >/dev/null 2>&1; then
		missing+=("${pkg_of[$bin]}")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "clients.sh: skopeo, podman, containerd, ctr, dockerd, chromium and docker-registry are already installed"
	exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)

as_root=()
if [ "$(id -u)" -ne 0 ]; then
	as_root=(sudo)
fi
echo "clients.sh: installing ${pkgs[*]}"
start=$SECONDS
"${as_root[@]}" apt-get update -qq
# Where no init system runs (CI), the packages' services are not started;
# the tests start their own daemons, each in a temp dir. --force-unsafe-io
# skips dpkg's fsyncs: a second or two on a throwaway machine.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-unsafe-io "${pkgs[@]}" >/dev/null
echo "clients.sh: installed in $((SECONDS - start))s"
for bin in "${!pkg_of[@]}"; do
	command -v "$bin" >/dev/null || { echo "clients.sh: $bin still missing after the install" >&2; exit 1; }
done
