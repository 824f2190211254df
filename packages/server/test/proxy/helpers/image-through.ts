import { expect } from '@jest/globals';
import type { pushImage } from '../../helpers/oci.js';

export type PushedImage = Awaited<ReturnType<typeof pushImage>>;

/** Pulls `alice/app:1` through the proxy upstream `up` of the Wharf at `url`: manifest and layer, byte for byte. */
export async function expectImageThrough(url: string, image: PushedImage): Promise<void> {
  const manifest = await fetch(`${url}/v2/proxy/up/alice/app/manifests/1`, { headers: { accept: image.manifest.mediaType } });
  expect(manifest.status).toBe(200);
  expect(Buffer.from(await manifest.arrayBuffer()).equals(image.manifest.bytes)).toBe(true);
  const layer = await fetch(`${url}/v2/proxy/up/alice/app/blobs/${image.layer.digest}`);
  expect(layer.status).toBe(200);
  expect(Buffer.from(await layer.arrayBuffer()).equals(image.layer.bytes)).toBe(true);
}
