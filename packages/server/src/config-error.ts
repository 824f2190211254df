/** Raised for any configuration problem; the message always names the key (or the file). */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
