"""The README's `--fast`, `--align`, `align`, `regions` and `edit replay` examples, run in the README's order as a
new user would type them, on a tiny model and the fixture photo.

Each command is read from README.md itself, so an example that changes (or stops working)
fails here. Only the files an example assumes the user has are made up: the model file
(replaced by a random tiny model), the photos (the astronaut fixture), a painted mask, a label
map, a direction and a record downloaded from the web editor.
"""

import base64
import io
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTO, ROOT
from stylemapgan.cli import main

#: Model file names the examples use for "your model".
MODEL_NAMES = ("celeba_hq.safetensors", "m.safetensors")
#: Photo names the examples use for "your photo".
PHOTO_NAMES = ("me.jpg", "friend.jpg", "selfie.jpg", "a.jpg", "b.jpg", "photo.jpg", "you.jpg",
               "group.jpg")


def readme_commands() -> list[str]:
    """Every `stylemapgan ...` line of README.md's bash blocks, continuations joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("stylemapgan "):
                commands.append(line)
    return commands


def _wanted(command: str) -> bool:
    if command.split()[1] == "serve":  # a server runs until stopped; test_web_* cover it
        return False
    if "data/avatars64/" in command:  # a make-avatars dataset (minutes); test_face_regions has it
        return False
    return ("--fast" in command or "--align" in command or " replay " in command
            or command.split()[1] in ("align", "regions"))


def _have_faces() -> bool:
    try:
        import dlib  # noqa: F401

        from stylemapgan.imaging import faces
        faces.predictor_path()
    except Exception:  # any reason the faces extra is unusable
        return False
    return True


def _web_record(model_file: Path, photo: Path) -> bytes:
    """A record downloaded from the web editor after one local edit."""
    from fastapi.testclient import TestClient

    from stylemapgan.web.app import create_app_from_file

    with TestClient(create_app_from_file(model_file, device="cpu", align=False)) as client:
        ids = []
        for name in ("a.png", "b.png"):
            img = Image.open(photo).convert("RGB").resize((32, 32))
            if name == "b.png":
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            r = client.post("/api/images", files={"file": (name, buf.getvalue(), "image/png")})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        mask = np.zeros((32, 32), np.uint8)
        mask[:, :12] = 255
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        body = {"session": "s", "seq": 1, "original": ids[0], "references": [ids[1]],
                "regions": [{"reference": 0, "mask": url}], "space": "wplus", "steps": 1}
        r = client.post("/api/edit", json=body)
        assert r.status_code == 200, r.text
        return client.get(r.json()["record"]).content


def _tiny64(tmp_path: Path) -> Path:
    import torch

    from stylemapgan.config import ModelConfig
    from stylemapgan.formats.checkpoint import save_model
    from stylemapgan.nn.networks import StyleMapGAN

    path = tmp_path / "tiny64.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_model(StyleMapGAN(ModelConfig(size=64, stylemap_size=8, stylemap_channels=4,
                                           mapping_layers=2, channel_cap=8, light=True)), path)
    return path


def _user_files(cwd: Path, home: Path, model_file: Path) -> None:
    """What the examples assume the user already has."""
    from stylemapgan.editing.directions import Direction, save_direction
    from stylemapgan.formats.checkpoint import load_model

    for name in PHOTO_NAMES:
        shutil.copy(PHOTO, cwd / name)
    for folder in ("photos", "my_photos"):
        (cwd / folder).mkdir()
        shutil.copy(PHOTO, cwd / folder / "astronaut.jpg")
    w, h = Image.open(PHOTO).size
    painted = np.zeros((h, w), np.uint8)
    painted[: h // 3] = 255  # the top of the head
    Image.fromarray(painted).save(cwd / "painted_hair.png")
    labels = np.ones((h, w), np.uint8)  # skin
    labels[: h // 3] = 13  # hair, CelebAMask-HQ numbering
    Image.fromarray(labels).save(cwd / "selfie_seg.png")
    cfg = load_model(model_file, device="cpu").config
    rng = np.random.default_rng(0)
    v = rng.standard_normal((cfg.stylemap_channels, cfg.stylemap_size, cfg.stylemap_size))
    import torch

    vec = torch.from_numpy(v / np.linalg.norm(v)).float()
    save_direction(Direction(vec, 0.0, {"method": "test"}), cwd / "smile.safetensors")
    (home / "Downloads").mkdir(parents=True)
    (home / "Downloads" / "stylemapgan-edit.json").write_bytes(_web_record(model_file, PHOTO))


def test_readme_fast_align_and_replay_examples_run_in_order(tmp_path, tiny_model_file, monkeypatch,
                                                            capsys):
    commands = [c for c in readme_commands() if _wanted(c)]
    kinds = {k: [c for c in commands if k in c]
             for k in ("--fast", "--align", " replay ", "stylemapgan align ")}
    assert all(kinds.values()), f"the README lost its examples of {[k for k, v in kinds.items() if not v]}"
    if not _have_faces():
        pytest.skip('the --align examples need the faces extra: pip install -e ".[faces]"')
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    model = cwd / "tiny.safetensors"
    shutil.copy(tiny_model_file, model)
    _user_files(cwd, home, model)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    ran, took = [], {}
    for command in commands:
        argv = [os.path.expanduser(a) for a in shlex.split(command)][1:]  # as the shell does
        argv = [str(model) if a in MODEL_NAMES else a for a in argv]
        if argv[0] in ("align", "regions"):
            pass  # no networks: detection and landmarks only
        elif argv[0] == "demo":  # a random 64 px model for speed (the embedded one takes ~10 s)
            argv += ["--model", str(_tiny64(tmp_path)), "--device", "cpu"]
        elif argv[:2] == ["edit", "replay"]:
            argv += [] if "--device" in argv else ["--device", "cpu"]  # the record's model
        else:
            argv += [] if "--model" in argv else ["--model", str(model)]
            argv += [] if "--device" in argv else ["--device", "cpu"]
        start = time.perf_counter()
        rc = main(argv)
        took[command] = round(time.perf_counter() - start, 1)
        out = capsys.readouterr()
        assert rc == 0, f"README example failed (exit {rc}): {command}\n{out.err}"
        target = Path(argv[argv.index("--out") + 1])
        assert target.exists() and any(target.iterdir()), f"{command}: nothing written to {target}"
        ran.append(command)
    assert len(ran) == len(commands) and len(ran) >= 5, ran
    print("seconds per example:", took)  # shown with pytest -s
