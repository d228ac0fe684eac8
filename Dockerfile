# Placeholder: the real multi-stage image (non-root, STOPSIGNAL SIGTERM, HEALTHCHECK) lands with
# the operations issue (#4). This builds the binary the same way CI does.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 bridge
COPY --from=build /src/target/release/bayeux-mqtt-bridge /usr/local/bin/bayeux-mqtt-bridge
USER bridge
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/bayeux-mqtt-bridge"]
