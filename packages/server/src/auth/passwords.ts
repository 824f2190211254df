import bcrypt from 'bcryptjs';
import { RegistryError } from '@wharf/registry-core';
import { MIN_BCRYPT_COST } from '../auth-config.js';
import { BcryptBusy, BcryptThread, type HashOptions } from './bcrypt-thread.js';
import { safeEqual } from './secrets.js';

/** The cost of new password hashes in production (about 0.3 s per hash in pure JS). */
export const PRODUCTION_BCRYPT_COST = 12;

/** bcrypt considers only the first 72 bytes of a password; longer ones are refused rather than cut. */
export const MAX_PASSWORD_BYTES = 72;

export function checkNewPassword(password: string): string | undefined {
  if (password.length < 8) return 'a password needs 8 characters or more';
  if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) return `a password may have at most ${MAX_PASSWORD_BYTES} bytes`;
  if (/^wharf_(pat|ci|rt)_/.test(password)) return 'a password must not look like a Wharf token';
  return undefined;
}

/** Where password checks run: off the event loop (see BcryptThread). Exported for tests that stop it. */
export const passwordThread = new BcryptThread();

/** `cost` below 10 only through the internal test option (never configuration). */
export function hashPassword(password: string, cost: number): Promise<string> {
  return bcrypt.hash(password, cost);
}

/**
 * Recomputes the hash with the stored salt and cost on the password thread, and compares the two in
 * constant time. A malformed stored hash never matches; a check the thread could not make fails
 * UNAVAILABLE (503), neither match nor mismatch; one refused for the checks already waiting fails
 * TOOMANYREQUESTS (429, the client's own) or UNAVAILABLE (503, everyone's), with Retry-After.
 */
export async function verifyPassword(password: string, stored: string, options: HashOptions = {}): Promise<boolean> {
  if (!/^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/.test(stored)) return false;
  let computed: string;
  try {
    computed = await passwordThread.hash(password, stored.slice(0, 29), options);
  } catch (err) {
    // Refused at once rather than queued behind a flood of them: the client tries again later.
    if (err instanceof BcryptBusy) {
      const code = err.ownerLimit ? 'TOOMANYREQUESTS' : 'UNAVAILABLE';
      throw new RegistryError(code, `${err.message}; try again later`, { retryAfter: err.retryAfter });
    }
    // No answer (the thread failed or stopped) is no wrong password: refused as one, it would be
    // remembered, and the right password refused at once for minutes after.
    throw new RegistryError('UNAVAILABLE', 'the password could not be checked now; try again', { reason: (err as Error).message });
  }
  // bcryptjs writes $2b$ whatever the stored variant; the variants hash alike.
  return safeEqual(computed.slice(4), stored.slice(4));
}

export { MIN_BCRYPT_COST };
