"""``stylemapgan train``: train a StyleMapGAN model (one process, or many under torchrun)."""

from __future__ import annotations

import argparse
import textwrap

from stylemapgan.commands._common import add_device, add_parser, int_in


def _settings_text() -> str:
    """The --set paragraph of the help, from the configs' own fields (so it cannot drift)."""
    from dataclasses import fields

    from stylemapgan.config import ModelConfig
    from stylemapgan.training.config import AMP_CHOICES, PERCEPTUAL_CHOICES, TrainConfig

    shown = {"perceptual": f"perceptual={'|'.join(PERCEPTUAL_CHOICES)}",
             "amp": f"amp={'|'.join(AMP_CHOICES)}", "channels_last": "channels_last=auto|on|off"}
    model = ", ".join(f.name for f in fields(ModelConfig))
    train = ", ".join(shown.get(f.name, f.name) for f in fields(TrainConfig))
    text = (f"--set changes any model setting ({model}) or training setting ({train}). A loss "
            "weight of 0 disables that term; the README's table gives each default.")
    return textwrap.fill(text, 96, initial_indent=" " * 12, subsequent_indent=" " * 12,
                         break_on_hyphens=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "train", help="train generator, encoder and discriminator on an image dataset",
        description="""
            Train StyleMapGAN with the full objective (G adversarial, stylemap reconstruction,
            D logistic with reconstructions as fakes, lazy R1, image MSE + LPIPS + adversarial
            loss on reconstructions, EMA of G and E). DATA is an LMDB (stylemapgan prepare-data),
            a folder of images or a zip. Each run gets a folder OUTDIR/NNNNN-NAME with
            config.json, log.jsonl, TensorBoard events, image grids and checkpoints.

            {settings}

            --resume RUN_DIR continues a run from its newest good checkpoint (one with NaN/Inf
            values is never written), rolling log.jsonl, image grids and TensorBoard events back
            to it; any training setting except batch_size, seed and val_images may change with
            --set (lr, amp, loss weights, intervals, ...; each change is recorded in the run's
            config.json "history"), the model settings may not. A run folder without a
            checkpoint yet is trained again from step 0. While a process trains into a run
            folder, a second one is refused.

            --init-from FILE starts a new run from trained networks (fine-tuning): a model file
            of this package (G and E; their EMA copies start equal to them; D is fresh), a
            training checkpoint or run folder of this package (all five networks), or a
            published reference checkpoint (.pt of naver-ai/StyleMapGAN, read like `convert`
            reads it). Optimizers and step count start afresh; the EMA warm-up is off
            (ema_rampup=0: the weights are already trained) unless --set asks for it. The
            architecture is the file's; --preset or model --set values that differ from it are
            refused, naming each setting. The file's name and SHA-256 go into config.json and the exported
            model's provenance, and a checkpoint of the initial weights is written at step 0.

            For several GPUs or machines, launch the same command with torchrun; batch_size is
            the total over all processes.""".replace("            {settings}", _settings_text()),
        examples="""
            stylemapgan train --data data/faces-lmdb --preset small-64 --set perceptual=none --outdir runs
            stylemapgan train --data photos/ --preset official-256 --set iterations=200000 --outdir runs
            stylemapgan train --resume runs/00000-small-64
            stylemapgan train --resume runs/00000-small-64 --set lr=0.0005 --set amp=off
            stylemapgan train --data data/faces-lmdb --preset small-64 --set batch_size=8 --dry-run
            stylemapgan train --data my_faces/ --init-from celeba_hq_256_8x8.pt --set lr=0.0005 --set iterations=20000 --outdir runs
            stylemapgan train --data data/avatars64/train --init-from avatars64.safetensors --set perceptual=alex --threads 1
            torchrun --standalone --nproc_per_node 4 -m stylemapgan.cli train --data data/faces-lmdb --preset official-256 --outdir runs""",
    )
    p.add_argument("--data", help="training images: LMDB folder, image folder or .zip")
    p.add_argument("--val-data", help="validation images (default: hold out val_images of --data)")
    p.add_argument("--preset", default=None,
                   help="model preset (default: official-256); see the README's preset table")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a model or training setting (repeatable)")
    p.add_argument("--outdir", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--name", default=None, help="run name (default: the preset name)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its newest good checkpoint (or from step 0 if it "
                        "has none yet); --set may change any training setting except "
                        "batch_size, seed and val_images, and no model setting")
    p.add_argument("--init-from", metavar="FILE",
                   help="start a new run from the networks of a model file, a training "
                        "checkpoint or run folder, or a reference .pt checkpoint (fine-tuning)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--threads", type=int_in(1, 1024), default=None,
                   help="CPU threads per process (default: PyTorch's choice; 1 is often faster "
                        "on a CPU shared with other jobs)")
    add_device(p)
    p.set_defaults(func=run)


def _resolve(args: argparse.Namespace):
    from pathlib import Path

    from stylemapgan.config import ModelConfig, get_preset
    from stylemapgan.errors import ConfigError
    from stylemapgan.training import TrainConfig, parse_overrides

    model_changes, train_changes = parse_overrides(args.overrides)
    if args.resume and args.init_from:
        raise ConfigError("--init-from starts a new run and --resume continues one; pass one "
                          "of them (a resumed run keeps the weights it started from)")
    if args.resume:
        from stylemapgan.training.run_folder import read_run_config

        run_dir = Path(args.resume)
        saved = read_run_config(run_dir)
        if args.preset:
            raise ConfigError("--resume keeps the run's model; do not pass --preset with it")
        if model_changes:
            raise ConfigError(f"--resume keeps the run's model: {', '.join(sorted(model_changes))} "
                              "cannot change on resume (the model settings define the networks' "
                              "shapes); start a new run instead")
        model = ModelConfig.from_dict(saved["model"])
        train = TrainConfig.from_dict({**saved["train"], **train_changes})
        data = args.data or saved.get("dataset")
        val_data = args.val_data or saved.get("val_dataset")
        return model, train, data, val_data, run_dir, saved
    if not args.data:
        raise ConfigError("--data is required (an LMDB from `stylemapgan prepare-data`, a folder "
                          "of images or a .zip); or use --resume RUN_DIR")
    init = None
    if args.init_from:
        from stylemapgan.training.init import check_architecture, read_initial_weights

        init = read_initial_weights(args.init_from)
        model = get_preset(args.preset) if args.preset else init.config
        if model_changes:
            model = model.replace(**model_changes)
        check_architecture(model, init.config, args.init_from)
        preset = args.preset or "finetune"
        # Trained weights need no EMA warm-up (it exists to forget a random start), as
        # StyleGAN2-ADA turns it off when resuming from a network; --set may still ask for it.
        train_changes.setdefault("ema_rampup", 0.0)
    else:
        preset = args.preset or "official-256"
        model = get_preset(preset)
        if model_changes:
            model = model.replace(**model_changes)
    train = TrainConfig(**train_changes)
    return model, train, args.data, args.val_data, None, {"preset": preset, "init": init}


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (from the parsed arguments, also in-process)."""
    import shlex

    parts = ["stylemapgan", "train"]
    for flag, value in (("--data", args.data), ("--val-data", args.val_data),
                        ("--preset", args.preset), ("--resume", args.resume),
                        ("--init-from", args.init_from),
                        ("--outdir", None if args.resume else args.outdir), ("--name", args.name),
                        ("--device", args.device), ("--threads", args.threads)):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def _lock_run_dir(stack, run_dir, command: str, dist_info) -> None:
    """Hold the run folder's lock (rank 0) until ``stack`` closes; every rank raises the
    FolderBusyError when another live process holds it."""
    from stylemapgan.errors import InputError
    from stylemapgan.files import FolderBusyError, folder_lock
    from stylemapgan.training import broadcast_object

    error = None
    if dist_info.is_main:
        try:
            stack.enter_context(folder_lock(
                run_dir, command, elsewhere="start a new run (--outdir, --name): two trainings "
                "cannot share a run folder"))
        except InputError as exc:
            error = exc
    message = broadcast_object(str(error) if error is not None else None, dist_info)
    if error is not None:
        raise error
    if message is not None:
        raise FolderBusyError(message)


def _print_start(trainer, args: argparse.Namespace, data_path, val_dataset, dist_info) -> None:
    """What the run starts from, what it resumes, its held-out images and its folder."""
    import sys

    import torch

    if not dist_info.is_main:
        return
    train, run_dir = trainer.config, trainer.run_dir
    if trainer.init_source is not None:
        src = trainer.init_source
        fresh = src.get("fresh") or []
        print(f"starting from {src['file']} ({src['kind']}, SHA-256 {src['sha256'][:12]}...)"
              + (f"; {', '.join(fresh)} fresh (not in that file)" if fresh else ""),
              file=sys.stderr)
    if args.resume:
        if trainer.resumed_from is None:
            print(f"{run_dir}: no checkpoint was written yet; training it again from step 0 "
                  "with its recorded config", file=sys.stderr)
        else:
            print(f"resuming from {trainer.resumed_from} (step {trainer.step})", file=sys.stderr)
        for h in trainer.history:
            if h["step"] == trainer.step:
                print(f"changed at step {h['step']}: {h['key']} {h['old']!r} -> {h['new']!r}",
                      file=sys.stderr)
    held = len(trainer.val_data) if trainer.val_data is not None else 0
    if val_dataset is None and held < train.val_images:
        print(f"warning: {data_path} has {len(trainer.dataset)} images, so {held} of "
              f"val_images={train.val_images} are held out for validation (a tenth of a "
              "small dataset, at least one); pass --val-data to validate on separate "
              "images", file=sys.stderr)
    print(f"run folder: {run_dir}  ({len(trainer.train_indices)} training images, {held} held "
          f"out; {dist_info.world_size} process(es) on {dist_info.device}; "
          f"precision {trainer.amp_dtype or torch.float32})".replace("torch.", ""),
          file=sys.stderr)


def _train_with_bar(trainer, dist_info) -> None:
    """Train, showing a progress bar on rank 0 (the losses of the last log interval)."""
    from tqdm import tqdm

    bar = tqdm(total=trainer.config.iterations, initial=trainer.step, unit="it", desc="train",
               dynamic_ncols=True, disable=not dist_info.is_main)

    def progress(report) -> None:
        bar.update(1)
        shown = {k: report.losses[k] for k in ("d", "adv", "x_rec") if k in report.losses}
        bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)

    try:
        trainer.train(progress)
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    import json

    model, train, data_path, val_path, run_dir, saved = _resolve(args)
    preset = saved.get("preset") or "run"
    if args.dry_run:
        init = saved.get("init")
        print(json.dumps({"model": model.to_dict(), "train": train.to_dict(),
                          "dataset": data_path, "val_dataset": val_path,
                          "resume": str(run_dir) if run_dir else None,
                          "init_from": init.source if init is not None else None}, indent=2))
        return 0
    _train(args, model, train, data_path, val_path, run_dir, saved, preset)
    return 0


def _train(args: argparse.Namespace, model, train, data_path, val_path, run_dir, saved,
           preset: str) -> None:
    """Open the data, make or lock the run folder, train and say where the result is."""
    import contextlib
    import sys
    from pathlib import Path

    import torch

    from stylemapgan.data.datasets import open_dataset
    from stylemapgan.errors import ConfigError
    from stylemapgan.training import (
        Trainer,
        broadcast_object,
        build_perceptual,
        init_distributed,
        new_run_dir,
        resolve_amp,
        shutdown_distributed,
    )
    from stylemapgan.training.run_folder import RunFolder, run_info

    if args.threads:
        torch.set_num_threads(args.threads)

    from stylemapgan.metrics import check_weights as check_metric_weights

    dist_info = init_distributed(args.device)
    stack = contextlib.ExitStack()  # the run folder's lock, held until the end
    finished = False  # the ranks meet at a barrier before leaving only after a normal end
    try:
        command = _command_line(args)
        if run_dir is not None:  # resume: refuse at once if another process trains there
            _lock_run_dir(stack, run_dir, command, dist_info)
        # Settings that depend on the machine fail here, before a run folder is made.
        resolve_amp(train.amp, dist_info.device)
        if train.batch_size % dist_info.world_size:
            raise ConfigError(f"batch_size {train.batch_size} is not divisible by the number of "
                              f"processes ({dist_info.world_size}); change --set batch_size")
        # The perceptual network too (it may need `stylemapgan weights fetch`).
        percept = build_perceptual(train.perceptual) if train.uses_perceptual else None
        check_metric_weights(train)  # and those of --set metrics=... (fid: Inception)
        dataset = open_dataset(data_path, model.size)
        val_dataset = open_dataset(val_path, model.size) if val_path else None
        if run_dir is None:
            if dist_info.is_main:
                run_dir = new_run_dir(args.outdir, args.name or preset)
                run_dir.mkdir(parents=True)
            run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, dist_info))
            _lock_run_dir(stack, run_dir, command, dist_info)
        skipped = getattr(dataset, "skipped", None) or []
        info = run_info(data=data_path, val_data=val_path, dataset_images=len(dataset),
                        skipped=len(skipped), preset=preset, command=command,
                        saved=saved if args.resume else None)
        if dist_info.is_main and skipped:
            listed = RunFolder(run_dir).append_skipped(skipped)
            print(f"skipped {len(skipped)} unreadable file(s) in {data_path}; listed in "
                  f"{listed}", file=sys.stderr)
        trainer = Trainer(model, train, dataset, run_dir, dist_info=dist_info,
                          val_dataset=val_dataset, perceptual=percept, resume=bool(args.resume),
                          extra_info=info, init_weights=saved.get("init"))
        _print_start(trainer, args, data_path, val_dataset, dist_info)
        _train_with_bar(trainer, dist_info)
        if dist_info.is_main:
            print(f"trained {trainer.step} iterations; checkpoints in {run_dir / 'checkpoints'}; "
                  f"export with: stylemapgan export {run_dir} --out model.safetensors")
        finished = True
    except OSError as exc:  # a full or read-only disk anywhere in the run: one line naming it
        from stylemapgan.files import disk_write_error

        mapped = disk_write_error(exc, run_dir or args.outdir)
        if mapped is None or mapped is exc:
            raise
        raise mapped from None
    finally:
        stack.close()
        shutdown_distributed(wait=finished)
