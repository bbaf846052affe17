"""``stylemapgan export``: a training run's EMA networks -> a model file."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_overwrite, add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "export", help="write a model file from a training run's checkpoint",
        description="""
            Take the EMA generator and encoder of a training run's newest checkpoint (or of
            --checkpoint) and write a self-describing model file with the run's provenance
            (dataset, iterations, images seen, training time, command). The model file works
            with every other command (generate, info, ...).""",
        examples="""
            stylemapgan export runs/00000-small-64 --out faces64.safetensors
            stylemapgan export runs/00000-small-64 --checkpoint runs/00000-small-64/checkpoints/ckpt-00005000.safetensors --out m.safetensors""",
    )
    p.add_argument("run_dir", help="training run folder (made by `stylemapgan train`)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--checkpoint", help="a specific checkpoint file (default: the newest)")
    p.add_argument("--raw", action="store_true", help="export the non-EMA weights instead")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stylemapgan.errors import ModelFileError
    from stylemapgan.formats.checkpoint import save_model
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.training import latest_checkpoint, model_from_checkpoint, read_checkpoint

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"{run_dir} is not a training run folder")
    if args.checkpoint:
        check_writable([out], True, inputs=[args.checkpoint])  # never over the checkpoint
        tensors, state = read_checkpoint(args.checkpoint)
        ckpt = Path(args.checkpoint)
    else:
        tensors, state, ckpt = latest_checkpoint(run_dir)
        check_writable([out], True, inputs=[ckpt])
    model = model_from_checkpoint(tensors, state, ema=not args.raw)
    info = state.get("info", {})
    provenance = {
        "source": "stylemapgan-train",
        "weights": "raw" if args.raw else "ema",
        "dataset": info.get("dataset"),
        "dataset_images": info.get("dataset_images"),
        "iterations": state["step"],
        "images_seen": state["images_seen"],
        "wall_time_s": round(float(state["wall_time"]), 1),
        "world_size": state.get("world_size", 1),
        "command": info.get("command"),
        "run": run_dir.name,
        "checkpoint": ckpt.name,
        "train_config": state["train_config"],
        "init_from": {k: v for k, v in (info.get("init_from") or {}).items() if k != "file"}
        or None,
    }
    save_model(model, out, provenance={k: v for k, v in provenance.items() if v is not None},
               overwrite=args.overwrite)
    print(f"wrote {out} from {ckpt} (step {state['step']}, {state['images_seen']:,} images seen)")
    return 0
