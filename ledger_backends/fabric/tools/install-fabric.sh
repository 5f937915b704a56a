#!/usr/bin/env bash
# Build the Hyperledger Fabric 2.5 LTS binaries the fabric-marked tests run (peer, orderer,
# configtxgen, cryptogen, osnadmin) from the Go module proxy, into a cache directory outside
# the repository that later runs and CI reuse. Idempotent: does nothing when they are there.
#
# Fabric's go.mod says `module github.com/hyperledger/fabric` (no /v2), so its v2.x tags are
# not module versions; we pin the pseudo-version of a release tag's commit instead.
# v2.5.9 is the newest 2.5.x release whose commit the module proxy here serves: the
# pseudo-versions of v2.5.10 .. v2.5.16 are answered "403 Forbidden: This module version is
# not available" (see docs/fabric.md).
#
# Prints the bin directory on its last line of stdout. Exit status 0 when the binaries are
# there, 1 when Go is missing or the build failed (the fabric tests then skip with a reason).
set -euo pipefail

FABRIC_RELEASE="${FABRIC_RELEASE:-2.5.9}"
FABRIC_MODULE_VERSION="${FABRIC_MODULE_VERSION:-v1.4.0-rc1.0.20240618194258-7c3876255bf0}"
TOOLS=(peer orderer configtxgen cryptogen osnadmin)

cache_root="${LINEAGE_LEDGER_FABRIC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lineage-ledger}"
bin_dir="$cache_root/fabric-$FABRIC_RELEASE/bin"

have_all() {
  for tool in "${TOOLS[@]}"; do
    [ -x "$bin_dir/$tool" ] || return 1
  done
  [ -f "$bin_dir/../config/core.yaml" ] && [ -f "$bin_dir/../config/orderer.yaml" ]
}

# Go may be installed without being on PATH (the official tarball's place).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

# The chaincode's modules too, so that the tests build it without asking the proxy.
chaincode_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../chaincode" && pwd)"
if command -v go >/dev/null 2>&1; then
  (cd "$chaincode_dir" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go mod download) >&2 \
    || echo "install-fabric: could not download the chaincode's modules" >&2
fi

if have_all; then
  echo "$bin_dir"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-fabric: no Go toolchain on PATH; cannot build Fabric $FABRIC_RELEASE" >&2
  exit 1
fi

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$bin_dir"
started=$(date +%s)
echo "install-fabric: building Fabric $FABRIC_RELEASE ($FABRIC_MODULE_VERSION) into $bin_dir" >&2
# `go install pkg@version` would first list the module's versions to look for a deprecation
# notice, and the proxy refuses that list for Fabric; downloading the one pinned version and
# building inside it asks only for exact versions. Its zip carries vendor/modules.txt without
# the vendored code, so -mod=readonly makes Go use the module cache instead.
go mod download "github.com/hyperledger/fabric@$FABRIC_MODULE_VERSION" >&2
src_dir="$(go env GOMODCACHE)/github.com/hyperledger/fabric@$FABRIC_MODULE_VERSION"
for tool in "${TOOLS[@]}"; do
  [ -x "$bin_dir/$tool" ] && continue
  # Build to a temporary name and rename, so an interrupted build never leaves a partial tool
  # that the idempotence check would take for a finished one.
  (cd "$src_dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
     -o "$bin_dir/.$tool.partial" "./cmd/$tool") >&2
  mv "$bin_dir/.$tool.partial" "$bin_dir/$tool"
  echo "install-fabric: $tool done after $(( $(date +%s) - started ))s" >&2
done
# The peer and orderer read core.yaml / orderer.yaml from FABRIC_CFG_PATH; the test network
# starts from Fabric's own sample defaults (used in place, never copied into this repository)
# and overrides what it needs through environment variables.
mkdir -p "$bin_dir/../config"
cp "$src_dir/sampleconfig/core.yaml" "$src_dir/sampleconfig/orderer.yaml" "$bin_dir/../config/"
chmod u+w "$bin_dir/../config/"*.yaml
echo "install-fabric: all binaries built in $(( $(date +%s) - started ))s" >&2
echo "$bin_dir"
