#!/usr/bin/env bash
# Install the offline Go toolchain used by the Go SDK (sdk/go) and tools/gen_go.sh.
#
# Everything comes from Debian's archive (bookworm: Go 1.19, protoc 3.21, grpc-go 1.33,
# google.golang.org/protobuf 1.28); Go sources land under /usr/share/gocode and are
# built in GOPATH mode, so no Go module proxy is needed.
#
# Idempotent and quiet: does nothing when every package is installed already.
# Runs as root (CI containers) or through sudo otherwise.
set -euo pipefail

PACKAGES=(
    golang-go                   # the go command
    protobuf-compiler           # protoc + well-known types in /usr/include/google/protobuf
    protoc-gen-go               # google.golang.org/protobuf/cmd/protoc-gen-go
    protoc-gen-go-grpc          # google.golang.org/grpc/cmd/protoc-gen-go-grpc
    golang-google-protobuf-dev  # google.golang.org/protobuf sources
    golang-google-grpc-dev      # google.golang.org/grpc sources (pulls x/net, x/sys, ...)
    golang-google-genproto-dev  # google.golang.org/genproto: googleapis/rpc/{status,errdetails}
    # github.com/golang/protobuf: grpc-go and genproto depend on "1-3 | 1-5" and apt picks
    # 1.3, which predates google.golang.org/protobuf (APIv2), the API protoc-gen-go 1.28
    # generates for; grpc 1.33 marshals and decodes status details through this package,
    # so it must be 1.5 (a wrapper over APIv2). The two conflict: naming 1.5 replaces 1.3.
    golang-github-golang-protobuf-1-5-dev
)

source "$(dirname "$0")/apt.sh"
apt_install "Go toolchain" "${PACKAGES[@]}"
