/**
 * URL-decodes a path capture. Malformed percent-encoding (`%zz`, a lone `%`) is kept as written, so the
 * name, tag or digest check downstream refuses it with its own 4xx instead of a URIError becoming a 500.
 * The routes, the route labels of logs and metrics, auth's route table and the manifest fast path all
 * decode with this, so they all see the same name.
 */
export function decodeCapture(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}
