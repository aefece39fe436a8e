# syntax=docker/dockerfile:1
# Build stage: the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p palisade-cli \
 && cp target/release/palisade /palisade

# Runtime stage: the binary and the nft tool it drives.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /palisade /usr/local/bin/palisade
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["agent", "--help"]
