export * from './config.js';
export * from './server.js';
export * from './app.js';
export * from './repositories.js';
export { ERROR_STATUS } from './http/error-status.js';
