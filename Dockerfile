# bayeux-mqtt-bridge container image.
#
#   docker build -t bayeux-mqtt-bridge .
#   docker run -d --name bayeux-mqtt-bridge \
#       --read-only --cap-drop=ALL --security-opt no-new-privileges \
#       --memory 512m --pids-limit 256 \
#       -v "$PWD/bridge.toml:/etc/bayeux-mqtt-bridge/bridge.toml:ro" \
#       -v bayeux-mqtt-bridge-state:/var/lib/bayeux-mqtt-bridge \
#       bayeux-mqtt-bridge
#
# The config is mounted at /etc/bayeux-mqtt-bridge/ (a file or the whole directory); nothing is
# baked in. The daemon writes only to the state volume, so the root filesystem can be
# read-only, and it needs no capability.
#
# The HEALTHCHECK asks the HTTP listener, which is off by default in the daemon; the image turns
# it on, on loopback only, with BAYEUX_MQTT_BRIDGE__HTTP__LISTEN=127.0.0.1:9464 (below). That
# variable wins over `[http] listen` in the file. To scrape /metrics from outside the
# container, run with `-e BAYEUX_MQTT_BRIDGE__HTTP__LISTEN=0.0.0.0:9464 -p 127.0.0.1:9464:9464`
# (or a private network): the endpoints have no authentication, and the metrics name channels
# and topics. An empty value (`-e BAYEUX_MQTT_BRIDGE__HTTP__LISTEN=`) leaves the file in
# charge; then the HEALTHCHECK needs a listener on port 9464, or --no-healthcheck.
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
# An empty state directory for the runtime stage (which has no shell to make one), private
# (0700): it holds the replay checkpoints and the spool.
RUN mkdir -p /state && mkdir -m 0700 /state/bayeux-mqtt-bridge

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
# volume here to keep them across container replacements. The parent is copied, not the
# directory's contents, so the directory itself keeps its mode 0700 (and a new named volume
# starts with it); a bind mount keeps the host directory's mode, which the daemon warns about
# at start when group or others can open it.
COPY --from=build --chown=65532:65532 /state/ /var/lib/
VOLUME ["/var/lib/bayeux-mqtt-bridge"]
# The metrics and health listener, on loopback so that the HEALTHCHECK works out of the box
# without exposing anything (see the top of this file to publish it).
ENV BAYEUX_MQTT_BRIDGE__HTTP__LISTEN=127.0.0.1:9464
EXPOSE 9464
# The daemon is PID 1 (exec form, no shell, no init) and drains on SIGTERM within
# bridge.drain_timeout_secs (8 s), under `docker stop`'s 10 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/bayeux-mqtt-bridge", "health", "--url", "http://127.0.0.1:9464/readyz"]
ENTRYPOINT ["/usr/local/bin/bayeux-mqtt-bridge"]
CMD ["--config", "/etc/bayeux-mqtt-bridge/bridge.toml"]
