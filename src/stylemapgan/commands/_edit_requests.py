"""The typed requests of ``stylemapgan edit``: each operation's options, read once from the
parsed command line. The operations in :mod:`stylemapgan.commands.edit` work from these alone;
nothing below them sees the argparse namespace."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stylemapgan.commands._editio import MaskOptions, canonical_argv

#: namespace entries that are not parameters of the edit (the record names them elsewhere)
_NOT_PARAMETERS = frozenset({"func", "model", "out", "overwrite", "device", "command", "operation",
                             "verbose"})


@dataclass(frozen=True)
class PasteBack:
    """--paste-back with its --paste-area, --paste-mode and --feather."""

    area: str
    mode: str
    feather: float


@dataclass(frozen=True)
class EditCommon:
    """What every edit operation is given: model and device, the output folder, how photos
    become the model's square, the paste-back (None without --paste-back), and what its
    record.json keeps: the command line (``argv``) and ``parameters``. ``inputs``: the existing
    files the options name (outputs must never replace one)."""

    operation: str
    model: str | None  # the file (the embedded model's without --model); None: that is missing
    device: str
    out: str
    overwrite: bool
    batch_size: int
    fast: bool
    gif_ms: int
    fit: str
    align: bool
    face: str
    align_refs: bool
    offers_source_box: bool
    source_box: str | None
    paste: PasteBack | None
    argv: tuple[str, ...]
    parameters: Mapping[str, Any]
    inputs: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> EditCommon:
        model = _model_file(args.model)
        # The record names the model file itself, also when --model was not given.
        recorded = argparse.Namespace(**{**vars(args), "model": model})
        paste = (PasteBack(args.paste_area, args.paste_mode, args.feather)
                 if getattr(args, "paste_back", False) else None)
        return cls(operation=args.operation, model=model, device=args.device, out=args.out,
                   overwrite=bool(args.overwrite), batch_size=args.batch_size, fast=args.fast,
                   gif_ms=args.gif_ms, fit=args.fit, align=bool(args.align),
                   face=str(getattr(args, "face", "largest")),
                   align_refs=bool(getattr(args, "align_ref", False)),
                   offers_source_box=hasattr(args, "source_box"),
                   source_box=getattr(args, "source_box", None), paste=paste,
                   argv=(args.operation, *canonical_argv(parser, recorded)),
                   parameters=_parameters(args), inputs=tuple(_input_files(args)))


@dataclass(frozen=True)
class Reconstruct:
    common: EditCommon
    source: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Reconstruct:
        return cls(EditCommon.from_args(args, parser), args.source)


@dataclass(frozen=True)
class Mix:
    common: EditCommon
    source: str
    reference: str
    layers: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Mix:
        return cls(EditCommon.from_args(args, parser), args.source, args.reference, args.layers)


@dataclass(frozen=True)
class Interpolate:
    common: EditCommon
    source: str
    reference: str
    steps: int
    space: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Interpolate:
        return cls(EditCommon.from_args(args, parser), args.source, args.reference, args.steps,
                   args.space)


@dataclass(frozen=True)
class Local:
    common: EditCommon
    source: str
    reference: str
    space: str
    steps: int
    mask: MaskOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Local:
        return cls(EditCommon.from_args(args, parser), args.source, args.reference, args.space,
                   args.steps, MaskOptions.from_args(args))


@dataclass(frozen=True)
class Transplant:
    common: EditCommon
    source: str
    refs: tuple[str, ...]
    regions: tuple[tuple[str, ...], ...]  # the KEY=VALUE words of each --region
    units: str
    space: str
    mask_mode: str
    steps: int

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Transplant:
        return cls(EditCommon.from_args(args, parser), args.source, tuple(args.refs),
                   tuple(tuple(words) for words in args.regions), args.units, args.space,
                   args.mask_mode, args.steps)


@dataclass(frozen=True)
class Direction:
    common: EditCommon
    source: str
    direction: str
    strength: float
    steps: int
    mask: MaskOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Direction:
        return cls(EditCommon.from_args(args, parser), args.source, args.direction, args.strength,
                   args.steps, MaskOptions.from_args(args))


def _model_file(value: str | None) -> str | None:
    """--model, or the embedded model's file; None when that is missing (the edit reports it
    when it loads the model, after checking its outputs, as it always did)."""
    from stylemapgan.commands._common import resolve_model
    from stylemapgan.errors import ModelFileError

    try:
        return resolve_model(value)
    except ModelFileError:
        return None


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """record.json's ``parameters``: every plain option value of the edit."""
    return {k: v for k, v in vars(args).items()
            if not k.startswith("_") and k not in _NOT_PARAMETERS
            and isinstance(v, (str, int, float, bool, list, type(None)))}


def _input_files(args: argparse.Namespace) -> list[str]:
    """Every option value that names an existing file (photos, stylemaps, masks, label maps,
    directions, the model; also inside transplant regions): outputs must never replace one."""
    import os

    found: list[str] = []
    for key, value in vars(args).items():
        if key.startswith("_") or key == "out":
            continue
        for v in value if isinstance(value, list) else [value]:
            for word in v if isinstance(v, list) else [v]:
                if not isinstance(word, str):
                    continue
                # A transplant region's mask=FILE or labels=FILE names a file after the "=".
                for name in (word, word.partition("=")[2]):
                    if name and os.path.isfile(name):
                        found.append(name)
    return found
