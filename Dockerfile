# syntax=docker/dockerfile:1
# respite's container image: the binary alone on a distroless base, run as a non-root user.
#
#   docker build -t ghcr.io/example/respite:0.1.0 .
#
# The entrypoint is the binary, so Kubernetes manifests pass only arguments
# (k8s/base/deployment.yaml). Nothing is published: push the image to your registry and
# name it in your overlay's "images" entry (k8s/overlays/example/kustomization.yaml).

# Build stage. Bookworm, the Debian of the runtime image below: a binary linked against a
# newer glibc would not start there.
FROM rust:1-bookworm AS build
WORKDIR /src
# Manifests and sources only (.dockerignore keeps target/, tests and the rest out).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# --locked: exactly the dependency versions of Cargo.lock. The cache mounts keep the crate
# registry and the build directory between builds; the binary is copied out of the cached
# target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin respite \
    && install -D -m 0755 target/release/respite /out/respite

# Runtime stage: glibc, libgcc and CA certificates, no shell, no package manager; the
# "nonroot" variant runs as UID/GID 65532, as the pod's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/respite /usr/local/bin/respite
COPY config.toml /etc/respite/config.example.toml
USER 65532:65532
# 6380: client listener (default 127.0.0.1:6380; the sidecar example uses
# --listen=127.0.0.1:6379); 9480: admin endpoint (--admin-listen=0.0.0.0:9480 to probe it).
EXPOSE 6380 9480
ENTRYPOINT ["/usr/local/bin/respite"]
