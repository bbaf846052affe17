#!/usr/bin/env node
// Render DiceBear "Open Peeps" avatars and per-part masks, deterministically, from integer seeds.
//
//   npm ci --prefix tools/avatars
//   node tools/avatars/render.mjs --out data/avatars64 --size 64 --start 0 --count 3000
//
// Output layout (see tools/avatars/README.md):
//   OUT/manifest.json                       settings, package versions, one record per image
//   OUT/{train,val,test}/seed000123.png     RGB avatars; the split is a function of the seed
//   OUT/masks/<part>/seed000123.png         8-bit grayscale masks, 0 or 255, at the image size,
//                                           for the parts an image has (none is empty)
//
// How masks are made: the Open Peeps SVG is a fixed stack of groups (body, head, face,
// facial hair, mask, accessories), and the body and head groups are stacks of paths told apart
// by their fill (skin, clothing or headwear colour, black lines). Each of these layers is
// rendered alone on a transparent canvas at the image size; with a_i the alpha of layer i, the
// visible share of layer i in a pixel is a_i * prod_{j above i} (1 - a_j), the share of the
// background is prod_j (1 - a_j). A part is a set of layers; a pixel belongs to it when the
// part's visible share is at least 1/2. Three parts are not plain visible shares: "head" is the
// head's silhouette whatever is drawn over it, "hair" removes the head's thin outline strokes
// with a morphological opening on a 4x render, and "face_region" is the convex hull of the
// expression on a 4x render (see PART_DOCS).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import zlib from 'node:zlib';

import { createAvatar } from '@dicebear/core';
import { openPeeps } from '@dicebear/collection';
import { Resvg } from '@resvg/resvg-js';

export const FORMAT = 'stylemapgan-avatars-1';
const HERE = path.dirname(fileURLToPath(import.meta.url));

// ------------------------------------------------------------------------------ style choices
// Every option is listed, so the result does not depend on the packages' defaults. DiceBear draws
// a fixed number of random values per avatar whatever these lists hold, so pinning one choice
// (e.g. head: ['afro']) for a seed keeps all its other choices.
export const STYLE_OPTIONS = Object.freeze({
  // plain, light backgrounds: grey, cream, mint, light blue, light pink
  backgroundColor: ['f0f2f5', 'fdf1e4', 'e6f2ea', 'e9eef9', 'f6ebf3'],
  backgroundType: ['solid'],
  // all 48 heads (hair styles and headwear)
  head: [
    'afro', 'bangs', 'bangs2', 'bantuKnots', 'bear', 'bun', 'bun2', 'buns', 'cornrows',
    'cornrows2', 'dreads1', 'dreads2', 'flatTop', 'flatTopLong', 'grayBun', 'grayMedium',
    'grayShort', 'hatBeanie', 'hatHip', 'hijab', 'long', 'longAfro', 'longBangs', 'longCurly',
    'medium1', 'medium2', 'medium3', 'mediumBangs', 'mediumBangs2', 'mediumBangs3',
    'mediumStraight', 'mohawk', 'mohawk2', 'noHair1', 'noHair2', 'noHair3', 'pomp', 'shaved1',
    'shaved2', 'shaved3', 'short1', 'short2', 'short3', 'short4', 'short5', 'turban', 'twists',
    'twists2',
  ],
  // 28 of the 30 expressions: the one-eyed 'cyclops' and the 'monster' are left out
  face: [
    'angryWithFang', 'awe', 'blank', 'calm', 'cheeky', 'concerned', 'concernedFear', 'contempt',
    'cute', 'driven', 'eatingHappy', 'explaining', 'eyesClosed', 'fear', 'hectic', 'lovingGrin1',
    'lovingGrin2', 'old', 'rage', 'serious', 'smile', 'smileBig', 'smileLOL', 'smileTeethGap',
    'solemn', 'suspicious', 'tired', 'veryAngry',
  ],
  facialHair: [
    'chin', 'full', 'full2', 'full3', 'full4', 'goatee1', 'goatee2', 'moustache1', 'moustache2',
    'moustache3', 'moustache4', 'moustache5', 'moustache6', 'moustache7', 'moustache8',
    'moustache9',
  ],
  facialHairProbability: 25,
  // glasses only (no eyepatch)
  accessories: [
    'glasses', 'glasses2', 'glasses3', 'glasses4', 'glasses5', 'sunglasses', 'sunglasses2',
  ],
  accessoriesProbability: 30,
  mask: ['medicalMask', 'respirator'],
  maskProbability: 0,
  skinColor: ['ffdbb4', 'edb98a', 'd08b5b', 'ae5d29', '694d3d'],
  clothingColor: ['e78276', 'ffcf77', 'fdea6b', '78e185', '9ddadb', '8fa7df', 'e279c7'],
  headContrastColor: [
    '2c1b18', 'e8e1e1', 'ecdcbf', 'd6b370', 'f59797', 'b58143', 'a55728', '724133', '4a312c',
    'c93305',
  ],
  flip: false,
  rotate: 0,
  scale: 100,
  translateX: 0,
  translateY: 0,
  radius: 0,
  clip: false,
  randomizeIds: false,
});

export const PART_DOCS = Object.freeze({
  background: 'pixels no drawn layer covers',
  skin: 'visible skin: the face and ears (head skin) and the neck and chest (body skin)',
  clothing: 'visible clothing of the body (headwear is part of hair)',
  head: 'head region: the silhouette of the head component (head skin, hair or headwear, '
    + 'outlines), including what the face, facial hair and glasses cover inside it',
  hair: 'hair or headwear (hats, hijab, turban): the head component without its skin, with '
    + 'strokes narrower than 26/704 of the image (the face and ear outlines, but also thin '
    + 'braids and stubble) removed by a morphological opening on a 4x render',
  face: 'the expression: eyes, brows, nose, mouth, teeth (visible strokes and fills)',
  face_region: 'convex hull of the expression component (eyes to mouth), occlusion ignored',
  facial_hair: 'beard or moustache, when the avatar has one',
  glasses: 'glasses or sunglasses frames and dark lenses, when the avatar has them',
  face_mask: 'medical mask or respirator, when the avatar has one (off by default)',
});
const ALWAYS_PARTS = ['background', 'skin', 'clothing', 'head', 'hair', 'face', 'face_region'];
const OPTIONAL_PARTS = { facialHair: 'facial_hair', accessories: 'glasses', mask: 'face_mask' };

// The layers of the Open Peeps SVG in painting order and the parts made of them.
const LAYERS = ['bodySkin', 'bodyClothing', 'bodyLines', 'headSkin', 'headHair', 'face',
  'facialHair', 'mask', 'accessories'];
const PART_LAYERS = {
  skin: ['bodySkin', 'headSkin'],
  clothing: ['bodyClothing'],
  face: ['face'],
  facial_hair: ['facialHair'],
  glasses: ['accessories'],
  face_mask: ['mask'],
};
const GROUP_TRANSFORMS = [
  ['head', 'matrix(.99789 0 0 1 156 62)'],
  ['face', 'translate(315 248)'],
  ['facialHair', 'translate(279 400)'],
  ['mask', 'translate(179 343)'],
  ['accessories', 'translate(203 303)'],
];
const SUPERSAMPLE = 4;
const HAIR_OPENING_RADIUS = 13; // in units of the 704-unit viewBox: removes strokes under 26 units

export const SPLIT_RULE = 'seed % 10 in 0..7: train, 8: val, 9: test';
export function splitOf(seed) {
  const r = seed % 10;
  return r <= 7 ? 'train' : r === 8 ? 'val' : 'test';
}
// The string DiceBear seeds its generator with. DiceBear's own hash of short strings like "0",
// "1", "2" gives neighbouring seeds similar first draws (consecutive seeds get alphabetically
// neighbouring heads), so the integer seed is scrambled through SHA-256 first.
export function dicebearSeed(seed) {
  return createHash('sha256').update(`stylemapgan-avatars/${seed}`).digest('hex').slice(0, 16);
}
export function nameOf(seed) {
  return `seed${String(seed).padStart(6, '0')}`;
}

export class UsageError extends Error {}

// ------------------------------------------------------------------------------ SVG structure
function parseAttrs(text) {
  const attrs = {};
  for (const m of text.matchAll(/([a-zA-Z:-]+)="([^"]*)"/g)) attrs[m[1]] = m[2];
  return attrs;
}

// The body DiceBear's style returns holds only <g> and <path> elements (attribute values are
// XML-escaped, so they hold no '<' or '>'); a small tokenizer is enough to get its tree.
function parseTree(body) {
  const root = { tag: '#root', attrs: {}, start: 0, end: body.length, children: [] };
  const stack = [root];
  const re = /<(\/?)([a-zA-Z]+)([^<>]*?)(\/?)>/g;
  let m;
  let last = 0;
  while ((m = re.exec(body)) !== null) {
    if (body.slice(last, m.index).trim()) throw new Error('unexpected text in the avatar SVG');
    last = re.lastIndex;
    const [, closing, tag, attrText, selfClosing] = m;
    if (closing) {
      const node = stack.pop();
      if (node.tag !== tag || stack.length === 0) throw new Error(`unbalanced </${tag}> in SVG`);
      node.end = re.lastIndex;
      continue;
    }
    const node = { tag, attrs: parseAttrs(attrText), start: m.index, end: re.lastIndex, children: [] };
    stack.at(-1).children.push(node);
    if (!selfClosing) stack.push(node);
  }
  if (stack.length !== 1) throw new Error('unclosed element in the avatar SVG');
  return root;
}

function structureError(what) {
  return new Error(`unexpected Open Peeps SVG structure (${what}); this script was written for `
    + '@dicebear/collection 9.4.3, install the locked versions with `npm ci`');
}

// Descend through wrapper groups that only carry inherited attributes.
function unwrap(node) {
  let children = node.children;
  while (children.length === 1 && children[0].tag === 'g' && !children[0].attrs.transform
    && !children[0].attrs.fill) {
    children = children[0].children;
  }
  return children;
}

// The layers of one avatar: name -> list of [start, end) spans of the body string.
export function splitLayers(body, colors) {
  const root = parseTree(body);
  const top = root.children;
  if (top.length !== 6 || top.some((n) => n.tag !== 'g')) throw structureError('top-level groups');
  const layers = Object.fromEntries(LAYERS.map((l) => [l, []]));
  const bodyParts = unwrap({ children: [top[0]] });
  const fills = bodyParts.map((n) => n.attrs.fill);
  if (bodyParts.length !== 3 || fills[0] !== colors.skin || fills[1] !== colors.clothing
    || fills[2] !== '#000') throw structureError(`body fills ${fills.join(',')}`);
  layers.bodySkin.push(bodyParts[0]);
  layers.bodyClothing.push(bodyParts[1]);
  layers.bodyLines.push(bodyParts[2]);
  GROUP_TRANSFORMS.forEach(([name, transform], i) => {
    const group = top[i + 1];
    if (group.attrs.transform !== transform) throw structureError(`${name} transform`);
    if (name !== 'head') {
      if (group.children.length) layers[name].push(...group.children);
      return;
    }
    const parts = unwrap(group);
    if (parts.length < 2 || parts[0].attrs.fill !== colors.skin
      || parts.slice(1).some((n) => n.attrs.fill === colors.skin)) {
      throw structureError('head paths');
    }
    layers.headSkin.push(parts[0]);
    layers.headHair.push(...parts.slice(1));
  });
  // every path must belong to exactly one layer
  const spans = Object.entries(layers).flatMap(([l, nodes]) => nodes.map((n) => [n.start, n.end, l]));
  const countPaths = (node) => (node.tag === 'path' ? 1 : 0)
    + node.children.reduce((s, c) => s + countPaths(c), 0);
  const inLayers = Object.values(layers).flat().reduce((s, n) => s + countPaths(n), 0);
  if (inLayers !== countPaths(root)) throw structureError('paths outside the known layers');
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) throw structureError('overlapping layers');
  }
  return Object.fromEntries(LAYERS.map((l) => [l, layers[l].map((n) => [n.start, n.end])]));
}

// The body with only the layers in `keep`: every other layer's elements are cut out, their
// ancestors (transforms, fill rules) stay.
function bodyWith(body, layers, keep) {
  const cut = Object.entries(layers).filter(([l]) => !keep.includes(l)).flatMap(([, s]) => s);
  cut.sort((a, b) => a[0] - b[0]);
  let out = '';
  let pos = 0;
  for (const [start, end] of cut) {
    out += body.slice(pos, start);
    pos = end;
  }
  return out + body.slice(pos);
}

// ------------------------------------------------------------------------------ rasterizing
const RESVG_FONT = { loadSystemFonts: false };

function renderRGBA(svg, width) {
  const img = new Resvg(svg, { fitTo: { mode: 'width', value: width }, font: RESVG_FONT }).render();
  if (img.width !== width || img.height !== width) throw new Error('resvg returned a wrong size');
  return img.pixels;
}

function alphaOf(svg, width) {
  const px = renderRGBA(svg, width);
  const a = new Float64Array(width * width);
  for (let i = 0; i < a.length; i++) a[i] = px[4 * i + 3] / 255;
  return a;
}

function binary(a) {
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] >= 0.5 ? 1 : 0;
  return out;
}

// Erosion (op = 'min') or dilation ('max') of a w x w binary image by a disk of radius r.
function morph(img, w, r, op) {
  const offs = [];
  const ri = Math.floor(r);
  for (let dy = -ri; dy <= ri; dy++) {
    for (let dx = -ri; dx <= ri; dx++) if (dx * dx + dy * dy <= r * r) offs.push([dx, dy]);
  }
  const out = new Uint8Array(img.length);
  const fill = op === 'min' ? 1 : 0; // outside the canvas: neutral for the operation
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < w; x++) {
      let v = op === 'min' ? 1 : 0;
      for (const [dx, dy] of offs) {
        const xx = x + dx;
        const yy = y + dy;
        const p = xx < 0 || yy < 0 || xx >= w || yy >= w ? fill : img[yy * w + xx];
        if (op === 'min' ? p === 0 : p === 1) { v = 1 - v; break; }
      }
      out[y * w + x] = v;
    }
  }
  return out;
}

// Mean of each k x k block: a (w*k) x (w*k) image -> w x w coverage in [0, 1].
function downsample(img, w, k) {
  const W = w * k;
  const out = new Float64Array(w * w);
  for (let y = 0; y < W; y++) {
    for (let x = 0; x < W; x++) out[Math.floor(y / k) * w + Math.floor(x / k)] += img[y * W + x];
  }
  for (let i = 0; i < out.length; i++) out[i] /= k * k;
  return out;
}

// Convex hull (Andrew's monotone chain) of the set pixels' centres, rasterized at pixel centres.
function convexHullFill(img, w) {
  const pts = [];
  for (let y = 0; y < w; y++) for (let x = 0; x < w; x++) if (img[y * w + x]) pts.push([x, y]);
  const out = new Uint8Array(img.length);
  if (pts.length === 0) return out;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const half = (list) => {
    const h = [];
    for (const p of list) {
      while (h.length >= 2 && cross(h.at(-2), h.at(-1), p) <= 0) h.pop();
      h.push(p);
    }
    h.pop();
    return h;
  };
  const hull = [...half(pts), ...half([...pts].reverse())];
  if (hull.length < 3) {
    for (const [x, y] of pts) out[y * w + x] = 1;
    return out;
  }
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < w; x++) {
      let inside = true;
      for (let i = 0; i < hull.length && inside; i++) {
        inside = cross(hull[i], hull[(i + 1) % hull.length], [x, y]) >= 0;
      }
      out[y * w + x] = inside ? 1 : 0;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------ PNG writing
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

// An 8-bit PNG (channels 1: grayscale, 3: RGB) without metadata, so equal pixels give equal bytes.
export function encodePng(pixels, width, height, channels) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = channels === 1 ? 0 : 2;
  const stride = width * channels;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter: none
    raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function writeAtomic(file, data) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

// ------------------------------------------------------------------------------ one avatar
// One avatar: { seed, name, split, attributes, image: PNG bytes, masks: {part: PNG bytes},
// pixels: {part: count} }. `options` override STYLE_OPTIONS (e.g. pin a head for a seed).
export function renderAvatar(seed, size, { masks = true, options = {} } = {}) {
  const captured = {};
  const style = {
    ...openPeeps,
    create(args) {
      const result = openPeeps.create(args);
      captured.body = result.body;
      captured.attributes = { ...result.attributes };
      return result;
    },
  };
  const avatar = createAvatar(style, { ...STYLE_OPTIONS, ...options, seed: dicebearSeed(seed) });
  const extra = avatar.toJson().extra;
  const attributes = {
    head: extra.head, face: extra.face, facialHair: extra.facialHair ?? null,
    accessories: extra.accessories ?? null, mask: extra.mask ?? null,
    skinColor: extra.skinColor, clothingColor: extra.clothingColor,
    headContrastColor: extra.headContrastColor, backgroundColor: extra.primaryBackgroundColor,
  };
  const rgba = renderRGBA(avatar.toString(), size);
  const rgb = Buffer.alloc(size * size * 3);
  for (let i = 0; i < size * size; i++) {
    if (rgba[4 * i + 3] !== 255) throw new Error(`seed ${seed}: background is not opaque`);
    rgb[3 * i] = rgba[4 * i];
    rgb[3 * i + 1] = rgba[4 * i + 1];
    rgb[3 * i + 2] = rgba[4 * i + 2];
  }
  const result = { seed, name: nameOf(seed), split: splitOf(seed), attributes,
    image: encodePng(rgb, size, size, 3), masks: {} };
  if (!masks) return result;

  const body = captured.body;
  const layers = splitLayers(body, {
    skin: extra.skinColor, clothing: extra.clothingColor, headContrast: extra.headContrastColor,
  });
  const attrs = Object.entries(captured.attributes).map(([k, v]) => ` ${k}="${v}"`).join('');
  const svgOf = (keep) => `<svg xmlns="http://www.w3.org/2000/svg"${attrs}>${bodyWith(body, layers, keep)}</svg>`;
  const n = size * size;
  const present = LAYERS.filter((l) => layers[l].length);
  const alpha = Object.fromEntries(present.map((l) => [l, alphaOf(svgOf([l]), size)]));
  // above[l][i]: the share of pixel i that the layers painted after l leave visible
  const above = {};
  let clear = new Float64Array(n).fill(1);
  for (const l of [...present].reverse()) {
    above[l] = clear;
    const next = new Float64Array(n);
    for (let i = 0; i < n; i++) next[i] = clear[i] * (1 - alpha[l][i]);
    clear = next;
  }
  const coverage = {};
  coverage.background = clear;
  for (const [part, ls] of Object.entries(PART_LAYERS)) {
    const use = ls.filter((l) => alpha[l]);
    if (!use.length) continue;
    const c = new Float64Array(n);
    for (const l of use) for (let i = 0; i < n; i++) c[i] += alpha[l][i] * above[l][i];
    coverage[part] = c;
  }
  // hair: the head's non-skin paths at 4x, thin strokes opened away, under the same occluders
  const big = size * SUPERSAMPLE;
  const radius = (HAIR_OPENING_RADIUS / 704) * big;
  const hairBig = binary(alphaOf(svgOf(['headHair']), big));
  const opened = morph(morph(hairBig, big, radius, 'min'), big, radius, 'max');
  const hair = downsample(opened, size, SUPERSAMPLE);
  // (never more than the layer's own coverage, so hair stays inside the head's silhouette)
  for (let i = 0; i < n; i++) hair[i] = Math.min(hair[i], alpha.headHair[i]) * above.headHair[i];
  coverage.hair = hair;
  // head: the head layers composited, ignoring the features painted over them
  const head = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    head[i] = alpha.headSkin[i] * (1 - alpha.headHair[i]) + alpha.headHair[i];
  }
  coverage.head = head;
  // face_region: the hull, and never less than the expression itself
  const region = downsample(
    convexHullFill(binary(alphaOf(svgOf(['face']), big)), big), size, SUPERSAMPLE);
  for (let i = 0; i < n; i++) region[i] = Math.max(region[i], alpha.face[i]);
  coverage.face_region = region;

  const wanted = [...ALWAYS_PARTS, ...Object.entries(OPTIONAL_PARTS)
    .filter(([layer]) => layers[layer].length).map(([, part]) => part)];
  result.pixels = {};
  for (const part of wanted) {
    const m = new Uint8Array(n);
    let count = 0;
    for (let i = 0; i < n; i++) {
      if (coverage[part][i] >= 0.5) { m[i] = 255; count++; }
    }
    if (count === 0) continue; // e.g. no hair on a bald head: no mask, not in "parts"
    result.masks[part] = encodePng(m, size, size, 1);
    result.pixels[part] = count;
  }
  return result;
}

// ------------------------------------------------------------------------------ a dataset
function packageVersions() {
  const versions = {};
  for (const pkg of ['@dicebear/core', '@dicebear/collection', '@dicebear/open-peeps',
    '@resvg/resvg-js']) {
    const file = path.join(HERE, 'node_modules', ...pkg.split('/'), 'package.json');
    versions[pkg] = JSON.parse(fs.readFileSync(file, 'utf8')).version;
  }
  return versions;
}

function settingsOf(size, masks) {
  const script = fs.readFileSync(fileURLToPath(import.meta.url));
  return {
    size,
    masks,
    style: 'openPeeps',
    options: STYLE_OPTIONS,
    split_rule: SPLIT_RULE,
    packages: packageVersions(),
    renderer_sha256: createHash('sha256').update(script).digest('hex'),
  };
}

export function buildDataset({ out, size, seeds, masks = true, overwrite = false,
  progress = () => {} }) {
  const manifestPath = path.join(out, 'manifest.json');
  const settings = settingsOf(size, masks);
  let manifest = null;
  if (fs.existsSync(manifestPath)) {
    manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
    if (manifest.format !== FORMAT
      || JSON.stringify(manifest.settings) !== JSON.stringify(settings)) {
      throw new UsageError(`${out} holds avatars built with other settings (size, masks, options `
        + 'or package versions); choose a new --out folder or delete that one');
    }
  }
  if (!overwrite) {
    for (const seed of seeds) {
      const file = path.join(out, splitOf(seed), `${nameOf(seed)}.png`);
      if (fs.existsSync(file)) {
        throw new UsageError(`${file} already exists; pass --overwrite to replace it`);
      }
    }
  }
  const records = new Map((manifest?.images ?? []).map((r) => [r.seed, r]));
  seeds.forEach((seed, k) => {
    const r = renderAvatar(seed, size, { masks });
    const file = `${r.split}/${r.name}.png`;
    writeAtomic(path.join(out, file), r.image);
    for (const [part, png] of Object.entries(r.masks)) {
      writeAtomic(path.join(out, 'masks', part, `${r.name}.png`), png);
    }
    // parts: the masks written for this image, with their pixel counts
    const record = { seed, name: r.name, split: r.split, file, attributes: r.attributes };
    if (masks) record.parts = r.pixels;
    records.set(seed, record);
    progress(k + 1, seeds.length);
  });
  const images = [...records.values()].sort((a, b) => a.seed - b.seed);
  const splits = { train: 0, val: 0, test: 0 };
  for (const r of images) splits[r.split]++;
  const result = {
    format: FORMAT,
    description: 'DiceBear Open Peeps avatars with per-part masks, rendered by '
      + 'tools/avatars/render.mjs of the stylemapgan repository',
    license: 'Open Peeps artwork by Pablo Stanley, CC0 1.0 (public domain); rendered with '
      + 'DiceBear (MIT) and resvg-js (MPL-2.0)',
    settings,
    node: process.version,
    layout: {
      images: '<split>/<name>.png (RGB)',
      masks: 'masks/<part>/<name>.png for each part in the image\'s "parts" (grayscale, 0 or 255)',
    },
    parts: Object.fromEntries(Object.entries(PART_DOCS).filter(([p]) => images.some(
      (r) => r.parts?.[p] !== undefined))),
    split_counts: splits,
    images,
  };
  // one line per image, so the file stays readable and diffs well
  const { images: list, ...head } = result;
  const text = `${JSON.stringify(head, null, 1).slice(0, -2)},\n "images": [\n${
    list.map((r) => `  ${JSON.stringify(r)}`).join(',\n')}\n ]\n}\n`;
  JSON.parse(text);
  writeAtomic(manifestPath, text);
  return result;
}

// ------------------------------------------------------------------------------ command line
const USAGE = `usage: node render.mjs --out DIR [--size 64] [--start 0] [--count 1000 | --seeds LIST]
                        [--no-masks] [--overwrite] [--progress]

Render Open Peeps avatars for seeds START .. START+COUNT-1 (or the seeds in LIST, like
0-7,19,29) into DIR: DIR/<split>/<name>.png, DIR/masks/<part>/<name>.png and DIR/manifest.json.
Split of a seed: ${SPLIT_RULE}.
Running again with other seeds adds them to DIR's manifest. --progress prints
"progress DONE TOTAL" lines on stdout.

example: node tools/avatars/render.mjs --out data/avatars64 --size 64 --count 3000`;

function parseIntArg(name, text, min, max) {
  if (!/^\d+$/.test(text ?? '') || Number(text) < min || Number(text) > max) {
    throw new UsageError(`${name} expects an integer in ${min}..${max}, got ${text ?? 'nothing'}`);
  }
  return Number(text);
}

// "0-7,19,29" -> [0, ..., 7, 19, 29] (sorted, without repeats)
function parseSeedList(text) {
  const seeds = new Set();
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m || Number(m[2] ?? m[1]) < Number(m[1])) {
      throw new UsageError(`bad --seeds ${text}: use forms like 0-7, 1,5,9 or 0-3,10`);
    }
    for (let s = Number(m[1]); s <= Number(m[2] ?? m[1]); s++) {
      seeds.add(s);
      if (seeds.size > 1000000) throw new UsageError('--seeds lists more than 1000000 seeds');
    }
  }
  if (!seeds.size) throw new UsageError(`no seeds in --seeds ${text}`);
  return [...seeds].sort((a, b) => a - b);
}

export function parseArgs(argv) {
  const args = { out: null, size: 64, start: 0, count: 1000, masks: true, overwrite: false,
    progress: false };
  let ranged = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--out') args.out = value();
    else if (a === '--size') args.size = parseIntArg(a, value(), 16, 512);
    else if (a === '--start') { args.start = parseIntArg(a, value(), 0, 999999); ranged = true; }
    else if (a === '--count') { args.count = parseIntArg(a, value(), 1, 1000000); ranged = true; }
    else if (a === '--seeds') args.seedList = parseSeedList(value());
    else if (a === '--no-masks') args.masks = false;
    else if (a === '--overwrite') args.overwrite = true;
    else if (a === '--progress') args.progress = true;
    else if (a === '-h' || a === '--help') args.help = true;
    else throw new UsageError(`unknown argument ${a}`);
  }
  if (args.help) return args;
  if (!args.out) throw new UsageError('--out DIR is required');
  if (ranged && args.seedList) throw new UsageError('give either --seeds or --start/--count');
  args.seeds = args.seedList ?? Array.from({ length: args.count }, (_, i) => args.start + i);
  delete args.seedList;
  if (args.seeds.some((seed) => seed > 999999)) {
    throw new UsageError('seeds must stay below 1000000 (names have six digits)');
  }
  return args;
}

function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`error: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const t0 = Date.now();
  let lastReport = 0;
  try {
    const manifest = buildDataset({
      ...args,
      progress: (done, total) => {
        if (args.progress) process.stdout.write(`progress ${done} ${total}\n`);
        else if (done === total || Date.now() - lastReport > 5000) {
          lastReport = Date.now();
          process.stderr.write(`rendered ${done}/${total}\n`);
        }
      },
    });
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    const c = manifest.split_counts;
    process.stdout.write(`wrote ${args.seeds.length} avatar(s) at ${args.size}px to ${args.out} in `
      + `${secs} s; the folder now holds train ${c.train}, val ${c.val}, test ${c.test}\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`error: ${err.message}\n`);
    return 2;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
