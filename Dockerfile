# Wharf image: build the workspace, then run it as a non-root user with storage as a volume.
FROM node:24-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/* \
 && npm install -g pnpm@10.34.9
WORKDIR /app
COPY . .
RUN CI=true pnpm install --frozen-lockfile && pnpm build && CI=true pnpm install --frozen-lockfile --prod

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app /app
RUN mkdir -p /app/storage && chown -R node:node /app/storage
USER node
VOLUME ["/app/storage"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s CMD node -e "fetch('http://127.0.0.1:5000/v2/').then(r=>process.exit(r.ok||r.status===401?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "packages/server/dist/cli.js"]
CMD ["serve", "--config", "/app/configuration.toml"]
