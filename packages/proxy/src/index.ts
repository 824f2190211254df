export * from './upstream.js';
export * from './token-auth.js';
export * from './http-upstream.js';
export * from './blob-fill.js';
export * from './cache-index.js';
export * from './pull-through.js';
export * from './mirrors.js';
export * from './cache-eviction.js';
