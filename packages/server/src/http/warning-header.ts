/**
 * `Warning: 299 - "text"`, as the spec allows: one code, quoted text, within 4096 bytes. Only
 * printable ASCII goes in (a quote, a backslash, a control or a non-ASCII character becomes a
 * space): node refuses a header with some of them, and the text may hold an upstream's words.
 */
export function warningHeader(text: string): string {
  const clean = text.replace(/[^\x20-\x7e]|["\\]/g, ' ').slice(0, 1000);
  return `299 - "${clean}"`;
}
