// Shared by every package's jest.config.js. Tests run the TypeScript sources through swc as ESM;
// workspace packages resolve to their src through the "@wharf/source" export condition, so a test
// run never depends on a stale dist.
import { fileURLToPath } from 'node:url';

export default {
  testEnvironment: fileURLToPath(new URL('./jest-environment.js', import.meta.url)),
  extensionsToTreatAsEsm: ['.ts'],
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  testEnvironmentOptions: { customExportConditions: ['@wharf/source', 'node', 'node-addons'] },
  transform: {
    '^.+\\.ts$': ['@swc/jest', {
      jsc: { parser: { syntax: 'typescript' }, target: 'es2023' },
      module: { type: 'es6' },
      sourceMaps: 'inline',
    }],
  },
  testTimeout: 60000,
};
