# Wharf image: build the workspace, then run it as a non-root user with storage as a volume.
#   docker build -t wharf .   (or: docker compose up -d, see docker-compose.yml)
FROM node:24-slim AS build
RUN npm install -g pnpm@10.34.9
WORKDIR /app
COPY . .
# Built, production dependencies only, and the one SQLite binding Node 24 loads (better-sqlite3 13,
# prebuilt: nothing compiles, so no compiler is installed); scripts/image-tree.sh says why, and
# packages/server/test/ops/image-tree.test.ts runs it and starts Wharf from what it leaves.
# A base image with a Node before 22.14 would need python3, make and g++ here for better-sqlite3 12.
RUN bash scripts/image-tree.sh

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app /app
# Everything Wharf writes (blobs, uploads, proxy cache, database, TLS files) lives in /app/storage.
RUN mkdir -p /app/storage && chown node:node /app/storage
USER node
VOLUME ["/app/storage"]
EXPOSE 5000
# /app/configuration.toml is the repository's; mount your own over it (docker-compose.yml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["node", "packages/server/dist/cli.js", "healthcheck", "--config", "/app/configuration.toml"]
STOPSIGNAL SIGTERM
# Memory (measured, see README "Measured"): --max-semi-space-size=4 caps V8's young generation at
# 2 x 4 MiB instead of 2 x 16 (more on Node 22+); --heap-growing-percent=100 lets the old generation
# grow 2x past what the last full GC kept instead of up to 4x. The same flags as `pnpm wharf` (tested).
# glibc's malloc keeps 2 MiB free at the top of its heap instead of 128 KiB (as `pnpm wharf` starts it):
# request bodies arrive in a fresh buffer per socket read, and without it the heap was given back and
# faulted in again, up to 47,000 page faults in a 1 GiB push (README, "Command line").
ENV MALLOC_TOP_PAD_=2097152
ENTRYPOINT ["node", "--max-semi-space-size=4", "--heap-growing-percent=100", "packages/server/dist/cli.js"]
CMD ["serve", "--config", "/app/configuration.toml"]
