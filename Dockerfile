# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin openai-project-sync

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent openai-sync
COPY --from=build /src/target/release/openai-project-sync /usr/local/bin/openai-project-sync
COPY config /etc/openai-project-sync/config
WORKDIR /etc/openai-project-sync
USER openai-sync
# Inside a container the listener must be reachable from outside it.
ENV APP_HTTP__LISTEN=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["openai-project-sync"]
CMD ["run"]
