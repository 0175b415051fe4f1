# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
# The default image is the production daemon, built without the development tools (the
# emulator with its fault injector, and `demo`). For an image that has them:
#   docker build --build-arg CARGO_FEATURES="--features dev-tools" .
FROM rust:1-bookworm AS build
ARG CARGO_FEATURES="--no-default-features"
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin openai-project-sync ${CARGO_FEATURES}

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin openai-sync
COPY --from=build /src/target/release/openai-project-sync /usr/local/bin/openai-project-sync
COPY config /etc/openai-project-sync/config
WORKDIR /etc/openai-project-sync
USER 10001:10001
# Inside a container the listener must be reachable from outside it.
ENV APP_HTTP__LISTEN=0.0.0.0:9187
EXPOSE 9187
# Liveness of the daemon's listener, without adding curl to the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9187 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["openai-project-sync"]
CMD ["run"]
