"""stylemapgan.files: atomic writes and the tagged safetensors files every file kind uses."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from stylemapgan.errors import InputError, ModelFileError
from stylemapgan.files import atomic_write, read_tagged, sha256_file, write_tagged

FMT = "stylemapgan-test"


def _write(path, **kw):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    return write_tagged(path, tensors, fmt=FMT, version=2, metadata={"note": "hi"}, **kw)


def _read(path, **kw):
    return read_tagged(path, fmt=FMT, version=2, what="test file", **kw)


def _one_line(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_round_trip_metadata_and_selected_tensors(tmp_path):
    p = _write(tmp_path / "t.safetensors")
    found = _read(p)
    assert found.path == p and found.version == 2 and sorted(found.keys) == ["a", "b"]
    assert found.metadata["note"] == "hi" and found.metadata["format"] == FMT
    assert torch.equal(found.tensors["a"], torch.arange(6.0).view(2, 3))
    assert list(_read(p, tensors=("b",)).tensors) == ["b"]
    meta_only = _read(p, tensors=False)
    assert meta_only.tensors == {} and sorted(meta_only.keys) == ["a", "b"]


def test_non_contiguous_and_grad_tensors_are_written(tmp_path):
    t = torch.arange(12.0, requires_grad=True).view(3, 4).T
    p = write_tagged(tmp_path / "t.safetensors", {"t": t}, fmt=FMT, version=1)
    assert torch.equal(load_file(str(p))["t"], t.detach())


def test_same_content_gives_the_same_bytes(tmp_path):
    # safetensors stores metadata in a hash map of random order; write_tagged sorts it, so the
    # SHA-256 of a file identifies its content.
    meta = {f"key{i}": f"value {i} ü" for i in range(12)}
    digests = set()
    for i in range(5):
        p = write_tagged(tmp_path / f"{i}.safetensors", {"x": torch.ones(3)}, fmt=FMT,
                         version=1, metadata=meta)
        digests.add(sha256_file(p))
        assert _read(p).metadata == {**meta, "format": FMT, "format_version": "1"}
    assert len(digests) == 1


def test_truncated_file(tmp_path):
    p = _write(tmp_path / "t.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(InputError, match="not a readable test file .*truncated") as e:
        _read(cut)
    _one_line(e, cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="garbage.safetensors: not a readable test file"):
        _read(garbage, tensors=False)


def test_foreign_and_untagged_files(tmp_path):
    other = tmp_path / "other.safetensors"
    write_tagged(other, {"x": torch.zeros(1)}, fmt="stylemapgan-model", version=1)
    with pytest.raises(InputError, match=r"is a safetensors file but not a test file "
                                         r"\(no 'stylemapgan-test' tag\); make one") as e:
        _read(other, hint="make one")
    _one_line(e, other)
    with pytest.raises(InputError, match="other.safetensors is a model file, not a test file"):
        _read(other, foreign={"stylemapgan-model": "a model file"})
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(InputError, match="not a test file"):
        _read(plain)
    # Files written before a kind had a tag can be accepted as an older version.
    old = _read(plain, untagged_version=0)
    assert old.version == 0 and torch.equal(old.tensors["x"], torch.zeros(1))
    # ... but a file tagged as another kind is still refused.
    with pytest.raises(InputError, match="not a test file"):
        _read(other, untagged_version=0)


def test_newer_version_and_bad_version(tmp_path):
    newer = write_tagged(tmp_path / "n.safetensors", {"x": torch.zeros(1)}, fmt=FMT, version=3)
    with pytest.raises(InputError, match=r"test file format 3 is newer than this stylemapgan "
                                         r"supports \(2\); upgrade stylemapgan") as e:
        _read(newer)
    _one_line(e, newer)
    assert _read(write_tagged(tmp_path / "o.safetensors", {"x": torch.zeros(1)}, fmt=FMT,
                              version=1)).version == 1
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": FMT, "format_version": "x"})
    with pytest.raises(InputError, match="unreadable format_version 'x'"):
        _read(bad)


def test_missing_tensor(tmp_path):
    p = _write(tmp_path / "t.safetensors")
    with pytest.raises(InputError, match=r"the test file has no tensor 'w'; it is damaged; "
                                         r"fetch it again") as e:
        _read(p, tensors=("a", "w"), fix="fetch it again")
    _one_line(e, p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match=r"nope\.safetensors: no such test file"):
        _read(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="^custom: gone$"):
        _read(tmp_path / "nope.safetensors", missing="custom: gone")
    with pytest.raises(InputError, match="is a folder, not a test file") as e:
        _read(tmp_path)
    _one_line(e, tmp_path)


def test_error_class_is_the_callers(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(plain.read_bytes()[:-2])
    p = _write(tmp_path / "t.safetensors")
    for path, kw in ((plain, {}), (cut, {}), (tmp_path / "none", {}), (tmp_path, {}),
                     (p, {"tensors": ("w",)})):
        with pytest.raises(ModelFileError):
            _read(path, error=ModelFileError, **kw)


def test_atomic_write_keeps_the_old_file_on_an_exception(tmp_path):
    target = _write(tmp_path / "t.safetensors")
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="crash"), atomic_write(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("crash")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary left

    class Boom:  # a tensor whose conversion fails while the file is written
        def detach(self):
            raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        write_tagged(target, {"a": Boom()}, fmt=FMT, version=2, overwrite=True)
    assert target.read_bytes() == before


def test_overwrite_refused_unless_asked(tmp_path):
    target = _write(tmp_path / "t.safetensors")
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        write_tagged(target, {"x": torch.zeros(1)}, fmt=FMT, version=2)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    write_tagged(target, {"x": torch.zeros(1)}, fmt=FMT, version=2, overwrite=True)
    assert list(_read(target).tensors) == ["x"]


def test_write_creates_parent_folders(tmp_path):
    p = _write(tmp_path / "a" / "b" / "t.safetensors")
    assert _read(p).version == 2


# --------------------------------------------------------------------------- folder locks
def test_folder_lock_refuses_a_second_holder_and_names_the_owner(tmp_path):
    import os

    from stylemapgan.files import LOCK_NAME, FolderBusyError, folder_lock

    out = tmp_path / "out"
    with folder_lock(out, "stylemapgan project a.png --out out") as held:
        assert held == out and (out / LOCK_NAME).is_file()
        with pytest.raises(FolderBusyError, match=rf"pid {os.getpid()}.*stylemapgan project"), \
                folder_lock(out):
            pass
    assert not (out / LOCK_NAME).exists()
    with folder_lock(out):  # free again
        pass


def test_folder_lock_of_a_killed_process_is_free_at_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from stylemapgan.files import LOCK_NAME, FolderBusyError, folder_lock

    out = tmp_path / "out"
    code = ("import sys, time\nfrom stylemapgan.files import folder_lock\n"
            "with folder_lock(sys.argv[1], 'holder'):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"pid {proc.pid}, `holder`"), folder_lock(out):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert (out / LOCK_NAME).exists()  # the file stays behind, the lock does not
        t0 = time.monotonic()
        with folder_lock(out):
            assert time.monotonic() - t0 < 1
    finally:
        proc.kill()
        proc.wait()


def test_folder_lock_on_an_unwritable_place_names_the_folder(tmp_path):
    from stylemapgan.errors import InputError
    from stylemapgan.files import folder_lock

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"file/out: cannot create the output folder.*--out"), \
            folder_lock(blocker / "out"):
        pass
