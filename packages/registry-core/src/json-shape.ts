/**
 * Bounds on the shape of a JSON document, checked on its bytes before JSON.parse builds it: a few
 * MiB of `[[[[...` or of `{},{},...` is a valid document that V8 turns into hundreds of MiB of
 * objects (and a second of CPU), which a byte cap alone does not prevent.
 *
 * A real manifest, index, image config or `docker save` manifest.json is a few levels deep and holds
 * at most a few objects and ten values per descriptor: 4 MiB of index descriptors with platforms is
 * 20,000 descriptors, about 40,000 objects, 160,000 values and 9 MiB of heap. Past the limits, 4 MiB
 * of `{}` took 73 MiB of heap and 0.9 s to parse, of `1.5` 28 MiB and 64 MiB of RSS; within them at
 * most about 7 MiB.
 */
export interface JsonShapeLimits {
  /** Objects and arrays inside one another. */
  readonly maxDepth: number;
  /** Objects and arrays in all. */
  readonly maxContainers: number;
  /** Values in all (objects' members and arrays' elements, counted by the commas between them). */
  readonly maxValues: number;
}

export const JSON_SHAPE_LIMITS: JsonShapeLimits = { maxDepth: 64, maxContainers: 100_000, maxValues: 250_000 };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;

/**
 * Why `bytes` is out of `limits` (a sentence to put in an error), or undefined when it is within
 * them. Only the structure is counted: whether the bytes are valid JSON is JSON.parse's to say.
 */
export function jsonShapeProblem(bytes: Uint8Array, limits: JsonShapeLimits = JSON_SHAPE_LIMITS): string | undefined {
  let depth = 0;
  let containers = 0;
  let commas = 0;
  const n = bytes.length;
  for (let i = 0; i < n; i++) {
    const c = bytes[i]!;
    if (c === QUOTE) {
      // Skip the string: to the next quote that no backslash escapes.
      for (i++; i < n; i++) {
        const s = bytes[i]!;
        if (s === BACKSLASH) i++;
        else if (s === QUOTE) break;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > limits.maxDepth) return `it nests objects and arrays more than ${limits.maxDepth} deep`;
      if (++containers > limits.maxContainers) return `it holds more than ${limits.maxContainers} objects and arrays`;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
    } else if (c === COMMA && ++commas >= limits.maxValues) {
      return `it holds more than ${limits.maxValues} values`;
    }
  }
  return undefined;
}

/** A document out of the shape limits; its message says how ("it nests ... more than 64 deep"). */
export class JsonShapeError extends Error {}

/**
 * JSON.parse of `bytes` (UTF-8) once their shape is within `limits`. Throws JsonShapeError when it is
 * not, SyntaxError when the bytes are no JSON.
 */
export function parseBoundedJson(bytes: Buffer, limits: JsonShapeLimits = JSON_SHAPE_LIMITS): unknown {
  const problem = jsonShapeProblem(bytes, limits);
  if (problem) throw new JsonShapeError(problem);
  return JSON.parse(bytes.toString('utf8'));
}
