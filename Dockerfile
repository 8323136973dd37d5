# syntax=docker/dockerfile:1
#
# eac-controller image: /eac-controller (subcommands `run`, `crd`) and /proton-emulator.
#   docker build -t eac-controller:dev .
#   docker run --rm eac-controller:dev crd          # print the CRD
#   docker run --rm --entrypoint /proton-emulator eac-controller:dev --help

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Sources only (see .dockerignore); Cargo.lock pins every dependency (--locked).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proton-emulator ./proton-emulator
# The cache mounts keep the registry and the target dir between builds (BuildKit);
# the binaries are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin eac-controller --bin proton-emulator \
 && mkdir -p /out \
 && cp target/release/eac-controller target/release/proton-emulator /out/

# glibc, libgcc, CA certificates, tzdata; no shell. Runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="eac-controller" \
      org.opencontainers.image.description="Kubernetes controller for AWS Proton environment account connections, with the Proton emulator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/eac-controller /eac-controller
COPY --from=builder /out/proton-emulator /proton-emulator
# Numeric, so that the kubelet can check runAsNonRoot (65532 is distroless "nonroot").
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/eac-controller"]
CMD ["run"]
