/**
 * A Host header that is a plain `host[:port]`: a name, an IPv4 address or a bracketed IPv6 one. Only
 * such a Host is echoed into a URL (a token realm, an HTTPS redirect). Underscores are in: Docker
 * Compose's service and container names (`ci_wharf:5000`) have them, and a realm that fell back to
 * the socket's address instead is refused by clients that check the realm's host against the
 * registry's (go-containerregistry, the .NET SDK, oras-dotnet).
 */
export const PLAIN_HOST = /^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;
