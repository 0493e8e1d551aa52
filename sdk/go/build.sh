#!/usr/bin/env bash
# Build the Go SDK offline, in GOPATH mode, against Debian's Go sources.
#
# Usage:
#   sdk/go/build.sh [OUT]     build examples/stream into OUT (default build/go/bin/stream)
#   sdk/go/build.sh --vet     go vet the SDK, the example and gen/go
#   sdk/go/build.sh --test    go test the SDK package
#   sdk/go/build.sh --env     print the environment to run go by hand (eval it)
#
# No network: modules are off and the GOPATH is
#   build/go/gopath   src/llamaorch/gen/go -> <repo>/gen/go
#                     src/llamaorch/sdk/go -> <repo>/sdk/go
#   /usr/share/gocode google.golang.org/{grpc,protobuf,genproto}, golang.org/x/... (apt)
# so the generated package is "llamaorch/gen/go/llama_orch/v1" (its go_package) and the
# SDK is "llamaorch/sdk/go/llamaorch". tools/install_go.sh installs the toolchain.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="$ROOT/build/go"
GOPATH_DIR="$BUILD/gopath"

if ! command -v go >/dev/null 2>&1; then
    echo "sdk/go/build.sh: go not found; run tools/install_go.sh" >&2
    exit 127
fi

# The GOPATH is only symlinks, recreated each time so a moved checkout still works.
mkdir -p "$GOPATH_DIR/src/llamaorch/gen" "$GOPATH_DIR/src/llamaorch/sdk"
ln -sfn "$ROOT/gen/go" "$GOPATH_DIR/src/llamaorch/gen/go"
ln -sfn "$ROOT/sdk/go" "$GOPATH_DIR/src/llamaorch/sdk/go"

export GO111MODULE=off
export GOPATH="$GOPATH_DIR:/usr/share/gocode"
export GOFLAGS=""
export GOPROXY=off
export GOCACHE="${GOCACHE:-$BUILD/cache}"
export CGO_ENABLED="${CGO_ENABLED:-0}"

PKGS=(llamaorch/gen/go/llama_orch/v1 llamaorch/sdk/go/llamaorch llamaorch/sdk/go/examples/stream)

case "${1:-}" in
    --vet)  exec go vet "${PKGS[@]}" ;;
    --test) exec go test "${@:2}" llamaorch/sdk/go/llamaorch ;;
    --env)
        for v in GO111MODULE GOPATH GOFLAGS GOPROXY GOCACHE CGO_ENABLED; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        exit 0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "usage: $0 [OUT | --vet | --test | --env]" >&2; exit 2 ;;
esac

OUT="${1:-$BUILD/bin/stream}"
mkdir -p "$(dirname "$OUT")"
go build -o "$OUT" llamaorch/sdk/go/examples/stream
echo "built $OUT" >&2
