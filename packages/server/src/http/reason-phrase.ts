/** Longest reason phrase sent (a status line is no place for a long message). */
const MAX_REASON = 200;

/**
 * `standard` (Bad Gateway), then `message`, as the reason phrase of a status line: printable ASCII
 * only (RFC 9112's reason-phrase, and what node accepts), cut to MAX_REASON characters. Clients that
 * print only the status line of an error (containerd, Docker for a 5xx, anyone for a HEAD) then show why.
 */
export function reasonPhrase(standard: string, message: string): string {
  const phrase = `${standard}: ${message}`.replace(/[^\x20-\x7e]+/g, ' ');
  return phrase.length > MAX_REASON ? `${phrase.slice(0, MAX_REASON - 3)}...` : phrase;
}
