# syntax=docker/dockerfile:1
# pdq's image: `docker build -t pdq .` (or `docker compose build`). `pdq --version` names the
# checkout's commit, read from the only files of .git the build context holds (HEAD,
# packed-refs, refs/: see .dockerignore); `--build-arg PDQ_COMMIT=…` overrides it and also sets
# the image's revision label. The binary is stripped; its debug info is
# kept in the `debuginfo` stage for profiling:
#   docker build --target debuginfo --output type=local,dest=./debuginfo .

FROM rust:1-bookworm AS build
WORKDIR /src

# 1. Dependencies only, built against dummy sources: this layer is reused until Cargo.toml or
#    Cargo.lock change, so editing pdq's code does not recompile its ~300 dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin/pdq bench \
    && echo 'fn main() {}' > src/bin/pdq/main.rs \
    && touch src/lib.rs \
    && for bench in queue worker emulator; do echo 'fn main() {}' > "bench/$bench.rs"; done \
    && cargo build --release --locked --bin pdq \
    && rm -rf src bench

# 2. pdq itself. COPY keeps the files' old mtimes: touch them so cargo rebuilds over the dummies.
ARG PDQ_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
COPY build.rs ./
COPY build build
# The checkout's HEAD and refs, when the context has them (the glob lets a source without .git
# build too; build.rs then says "unknown").
COPY build.rs .gi[t] /src/git-meta/
ENV PDQ_GIT_DIR=/src/git-meta
COPY migrations migrations
COPY src src
COPY bench bench
RUN touch build.rs src/lib.rs src/bin/pdq/main.rs \
    && cargo build --release --locked --bin pdq \
    && mkdir /out \
    && objcopy --only-keep-debug target/release/pdq /out/pdq.debug \
    && objcopy --strip-all --add-gnu-debuglink=/out/pdq.debug target/release/pdq /out/pdq \
    && /out/pdq --version

# The debug info alone, for `--target debuginfo --output …` (never part of the runtime image).
FROM scratch AS debuginfo
COPY --from=build /out/pdq.debug /pdq.debug

FROM debian:bookworm-slim AS runtime
ARG PDQ_COMMIT=unknown
LABEL org.opencontainers.image.title="pdq" \
      org.opencontainers.image.description="Durable, Postgres-backed queue that writes participant data onto live Genesys Cloud conversations" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${PDQ_COMMIT}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.documentation="README.md in the source repository"
# ca-certificates: the system store pdq trusts besides its built-in roots (add a company CA
# with a derived image: COPY it to /usr/local/share/ca-certificates/ and run update-ca-certificates).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pdq \
    && useradd --system --uid 10001 --gid pdq --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pdq
COPY --from=build /out/pdq /usr/local/bin/pdq
USER 10001:10001
# In a container /metrics and /healthz must listen beyond loopback to be scraped or probed;
# publish the port on the host's loopback only (Compose does). `pdq healthcheck` follows
# PDQ_METRICS_ADDR (asking 127.0.0.1 on its port).
ENV PDQ_METRICS_ADDR=0.0.0.0:9187
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["pdq", "healthcheck", "--live"]
ENTRYPOINT ["pdq"]
CMD ["run"]
