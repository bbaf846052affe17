#!/usr/bin/env node
// Ground truth for scoring local edits: avatar A re-rendered with the head (hair style or
// headwear) and hair colour of avatar B, everything else of A unchanged. DiceBear draws the same
// random values whatever the option lists hold, so pinning A's head and headContrastColor to
// B's keeps all of A's other choices (face, skin, clothing, background, accessories).
//
//   node tools/avatars/swap_heads.mjs --out DIR --size 64 --pairs 9:19,29:39
//
// Writes DIR/src/A_B.png (A), DIR/ref/A_B.png (B), DIR/target/A_B.png (A with B's head),
// DIR/mask_src/A_B.png and DIR/mask_ref/A_B.png (the "hair" masks of A and of B, 0/255,
// absent pixels when an avatar has no hair) and DIR/pairs.json.

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';

import { encodePng, renderAvatar } from './render.mjs';

function parsePairs(text) {
  return text.split(',').filter(Boolean).map((p) => {
    const m = /^(\d+):(\d+)$/.exec(p.trim());
    if (!m) throw new Error(`bad pair ${p}: use A:B seed pairs like 9:19`);
    return [Number(m[1]), Number(m[2])];
  });
}

function main(argv) {
  const args = { size: 64 };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    if (argv[i] === '--out') args.out = v();
    else if (argv[i] === '--size') args.size = Number(v());
    else if (argv[i] === '--pairs') args.pairs = parsePairs(v());
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!args.out || !args.pairs) throw new Error('usage: swap_heads.mjs --out DIR --size 64 --pairs A:B,...');
  const dirs = ['src', 'ref', 'target', 'mask_src', 'mask_ref'];
  for (const d of dirs) fs.mkdirSync(path.join(args.out, d), { recursive: true });
  const empty = encodePng(new Uint8Array(args.size * args.size), args.size, args.size, 1);
  const records = [];
  for (const [a, b] of args.pairs) {
    const A = renderAvatar(a, args.size);
    const B = renderAvatar(b, args.size);
    const T = renderAvatar(a, args.size, {
      masks: false,
      options: { head: [B.attributes.head], headContrastColor: [B.attributes.headContrastColor] },
    });
    const name = `${A.name}_${B.name}.png`;
    fs.writeFileSync(path.join(args.out, 'src', name), A.image);
    fs.writeFileSync(path.join(args.out, 'ref', name), B.image);
    fs.writeFileSync(path.join(args.out, 'target', name), T.image);
    fs.writeFileSync(path.join(args.out, 'mask_src', name), A.masks.hair ?? empty);
    fs.writeFileSync(path.join(args.out, 'mask_ref', name), B.masks.hair ?? empty);
    records.push({ name, src: a, ref: b, src_head: A.attributes.head, ref_head: B.attributes.head,
      target_head: T.attributes.head });
  }
  fs.writeFileSync(path.join(args.out, 'pairs.json'), JSON.stringify(records, null, 1));
  return 0;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  console.error(`error: ${err.message}`);
  process.exitCode = 2;
}
