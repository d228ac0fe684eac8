# bayeux-mqtt-bridge container image.
#
#   docker build -t bayeux-mqtt-bridge .
#   docker run -d --name bayeux-mqtt-bridge \
#       -v "$PWD/bridge.toml:/etc/bayeux-mqtt-bridge/bridge.toml:ro" bayeux-mqtt-bridge
#
# The config is mounted at /etc/bayeux-mqtt-bridge/ (a file or the whole directory); nothing is
# baked in. The HEALTHCHECK needs the HTTP listener: `[http] listen = "127.0.0.1:9464"` (or
# "0.0.0.0:9464" to scrape /metrics from outside the container).
#
# Both base images are pinned by tag and by the digest of their multi-arch index. Bump a tag and
# its digest together (`docker buildx imagetools inspect IMAGE:TAG` prints the digest).
# scripts/check-packaging checks this file statically and runs the build stage's cargo command.

# Build stage: the same command CI runs.
FROM rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
RUN cargo build --release --locked
# An empty state directory for the runtime stage (which has no shell to make one).
RUN mkdir -p /state/bayeux-mqtt-bridge

# Runtime stage: glibc, libgcc, CA certificates and nothing else (no shell, no package
# manager). Debian 12 like the build stage, so the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime
LABEL org.opencontainers.image.title="bayeux-mqtt-bridge" \
      org.opencontainers.image.description="Bridge Bayeux (CometD) channels and MQTT topics" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/bayeux-mqtt-bridge /usr/local/bin/bayeux-mqtt-bridge
# distroless's `nonroot` user. A mounted secret file (mqtt.password_file, bayeux.token_file)
# must be readable by this uid.
USER 65532:65532
# `[replay] state_dir` (the replay checkpoints) and `[spool] dir` (spool/ below it). Mount a
# volume here to keep them across container replacements.
COPY --from=build --chown=65532:65532 /state/bayeux-mqtt-bridge /var/lib/bayeux-mqtt-bridge
VOLUME ["/var/lib/bayeux-mqtt-bridge"]
# The optional metrics and health listener (`[http] listen`).
EXPOSE 9464
# The daemon is PID 1 (exec form, no shell, no init) and drains on SIGTERM within
# bridge.drain_timeout_secs (8 s), under `docker stop`'s 10 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/bayeux-mqtt-bridge", "health", "--url", "http://127.0.0.1:9464/readyz"]
ENTRYPOINT ["/usr/local/bin/bayeux-mqtt-bridge"]
CMD ["--config", "/etc/bayeux-mqtt-bridge/bridge.toml"]
