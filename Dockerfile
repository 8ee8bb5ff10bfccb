# pdq in a container: `docker compose up` builds this.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pdq

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pdq /usr/local/bin/pdq
USER nobody
ENTRYPOINT ["pdq"]
