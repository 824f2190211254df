/** Node's codes for a peer's certificate that does not verify (a private CA, expired, self-signed, wrong name). */
const CERTIFICATE_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_REVOKED',
]);

/** The connection's peer has a certificate that does not verify. */
export function isCertificateFailure(code: string): boolean {
  return CERTIFICATE_CODES.has(code) || code.startsWith('ERR_TLS_CERT');
}

/**
 * The TLS handshake failed otherwise: most often TLS spoken to a server that speaks plain HTTP (OpenSSL's
 * "wrong version number", EPROTO or ERR_SSL_WRONG_VERSION_NUMBER depending on the Node version).
 */
export function isHandshakeFailure(code: string): boolean {
  return code === 'EPROTO' || code.startsWith('ERR_SSL_');
}
