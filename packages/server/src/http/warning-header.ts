/** `Warning: 299 - "text"`, as the spec allows: one code, quoted text, within 4096 bytes. */
export function warningHeader(text: string): string {
  const clean = text.replace(/["\\\r\n]/g, ' ').slice(0, 1000);
  return `299 - "${clean}"`;
}
