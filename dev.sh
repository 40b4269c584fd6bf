#!/usr/bin/env bash
# Sets up what portcullis needs on a fresh Debian machine, then runs the demo or the tests.
#   ./dev.sh demo   build and run `portcullis demo`
#   ./dev.sh test   formatting, lints, the whole test suite, and the deployment checks
#                   (k8s manifests, webhook output, compose, Dockerfile: ci/validate-k8s.sh)
set -euo pipefail
cd "$(dirname "$0")"

install_debian_packages() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)     # pingora's compression dependency
    command -v curl >/dev/null || missing+=(curl)       # tests use curl as an independent client
    command -v openssl >/dev/null || missing+=(openssl) # tests make certificates with it
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

case "${1:-}" in
    demo)
        install_debian_packages
        # A debug build: it compiles in about half the time of a release one, and shares its
        # artifacts with the tests.
        exec cargo run --locked -- demo
        ;;
    test)
        install_debian_packages
        cargo fmt --all -- --check
        cargo clippy --all-targets --locked -- -D warnings
        cargo test --locked
        bash ci/validate-k8s.sh
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test" >&2
        exit 2
        ;;
esac
