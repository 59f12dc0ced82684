# syntax=docker/dockerfile:1
# Multi-stage build: compile in the official Rust image with cache mounts,
# run on distroless cc (glibc, CA-free: dastra-proxy ships the web-PKI roots)
# as a non-root user. Config is mounted as a file; secrets come from env or
# mounted files, never from the image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dastra-proxy \
    && install -D -m 0755 target/release/dastra-proxy /out/dastra-proxy
# The window log survives restarts in a volume the non-root user can write;
# the image's own config (deploy/container.toml) listens on every interface,
# lets the private ranges in, and keeps its state_file there.
COPY deploy/container.toml /out/config.toml
RUN install -d -m 0750 -o 65532 -g 65532 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dastra-proxy /usr/local/bin/dastra-proxy
COPY --from=build /out/config.toml /etc/dastra-proxy/config.toml
COPY --from=build --chown=65532:65532 /out/state /var/lib/dastra-proxy
VOLUME /var/lib/dastra-proxy
ENV DASTRA_PROXY_CONFIG=/etc/dastra-proxy/config.toml
USER 65532:65532
# 8080: the proxy; 9090: admin (/metrics, /healthz, /readyz, /quota, status page).
# Any key can be changed with DASTRA_PROXY__<TABLE>__<KEY>, or mount a whole
# config over /etc/dastra-proxy/config.toml.
EXPOSE 8080 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/dastra-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/dastra-proxy"]
CMD ["run"]
