# syntax=docker/dockerfile:1
#
# The portcullis image: one static-OpenSSL binary on distroless, running as a non-root user.
#
#   docker build -t portcullis:dev .
#
# The same image serves the sidecar (`portcullis run`, the default command) and the admission
# webhook (`portcullis inject`). It has no shell and writes nothing to its root filesystem, so it
# runs with `readOnlyRootFilesystem: true`.

ARG RUST_VERSION=1.95

# ---- build -------------------------------------------------------------------------------
# Bookworm, so the binary's glibc matches the distroless debian12 runtime below.
FROM rust:${RUST_VERSION}-slim-bookworm AS build

# cmake builds pingora's compression dependency; perl and make build the vendored OpenSSL.
# Versions are left to the pinned Debian release: pinning them here would break on every
# point release without making the build more reproducible than the base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake make perl g++ pkg-config \
    && rm -rf /var/lib/apt/lists/*

ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
WORKDIR /src

# Dependencies first, against placeholder sources: this layer, the slow one, is rebuilt only
# when Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/portcullis-* target/release/deps/*portcullis*

# Then the real sources. The fingerprints of the placeholder were removed above, so cargo
# cannot mistake the placeholder binary for an up-to-date one.
COPY src ./src
RUN cargo build --release --locked --bin portcullis \
    && cp target/release/portcullis /portcullis

# ---- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc and libgcc, no shell, no package manager. OpenSSL is linked statically
# (pingora vendors it), so nothing else is needed.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /portcullis /usr/local/bin/portcullis

# 65532 is distroless' `nonroot`; numeric, so `runAsNonRoot` can verify it.
USER 65532:65532
# 8443: the sidecar's listener, 9901: its admin endpoints, 9443: the webhook.
EXPOSE 8443 9901 9443
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run"]
