/** Raised for any configuration problem; the message always names the key (or the file). */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** A command used wrongly (no such user, a bad option value): not the configuration's fault. */
export class UsageError extends ConfigError {
  override name = 'UsageError';
}
