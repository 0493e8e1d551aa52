#!/usr/bin/env bash
# Regenerate the Go stubs in gen/go from proto/ (messages + gRPC clients/servers).
#
# Usage: tools/gen_go.sh [--check]
#
# Output: gen/go/llama_orch/v1/*.pb.go, package orchv1, import path
# "llamaorch/gen/go/llama_orch/v1" (the go_package option of every .proto). The Go SDK
# builds against it in GOPATH mode (see sdk/go/build.sh).
#
# --check regenerates into a temporary folder and exits 1 if gen/go differs, so CI fails
# when someone edits a .proto without regenerating (or edits gen/go by hand).
#
# Needs protoc, protoc-gen-go and protoc-gen-go-grpc: tools/install_go.sh installs
# Debian's (protoc 3.21.12, protoc-gen-go v1.28.1, protoc-gen-go-grpc 1.0 from grpc-go
# 1.33.3). The generated headers name these versions, so --check expects the same ones.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROTO_DIR="$ROOT/proto"
OUT_DIR="$ROOT/gen/go"
MODULE="llamaorch/gen/go"   # go_package prefix that maps to gen/go

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "gen_go: $tool not found; run tools/install_go.sh" >&2
        exit 127
    fi
done

# Well-known types (google/protobuf/*.proto): Debian's protobuf-compiler ships them in
# /usr/include; protoc finds that on its own, but name it when it is elsewhere.
includes=(-I "$PROTO_DIR")
for dir in /usr/include /usr/local/include; do
    if [ -f "$dir/google/protobuf/timestamp.proto" ]; then
        includes+=(-I "$dir")
        break
    fi
done

generate() {  # generate OUT: write OUT/llama_orch/v1/*.go
    local out="$1"
    mkdir -p "$out"
    # Relative proto paths keep "source:" comments free of checkout locations; one
    # protoc run because every file shares one Go package.
    local protos
    mapfile -t protos < <(cd "$PROTO_DIR" && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
    (cd "$PROTO_DIR" && protoc "${includes[@]}" \
        --go_out="$out" --go_opt=module="$MODULE" \
        --go-grpc_out="$out" --go-grpc_opt=module="$MODULE" \
        "${protos[@]}")
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
generate "$tmp"

if [ "$check" -eq 1 ]; then
    if ! diff -r "$tmp/llama_orch" "$OUT_DIR/llama_orch" >"$tmp/diff.txt" 2>&1; then
        echo "gen/go is stale; run tools/gen_go.sh:" >&2
        sed 's/^/  /' "$tmp/diff.txt" | head -n 40 >&2
        exit 1
    fi
    echo "gen/go is up to date"
    exit 0
fi

rm -rf "$OUT_DIR/llama_orch"
mkdir -p "$OUT_DIR"
cp -R "$tmp/llama_orch" "$OUT_DIR/llama_orch"
echo "generated $OUT_DIR/llama_orch"
