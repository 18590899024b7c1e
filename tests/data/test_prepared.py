"""The prepared (memory-mapped) copy of an image folder: same pixels as the in-memory loader, rebuilt
when its source changes, never half-written, and `ddpmkit data` errors as one line with exit code 2."""

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.data import DataError, load_dataset
from ddpmkit.data import prepared as P
from ddpmkit.testing.image_folder import make_mixed_folder


@pytest.fixture()
def folder(tmp_path):
    return make_mixed_folder(tmp_path / "images", target=8)


def _in_memory(root, size, channels=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset("image-folder", data_dir=root, image_size=size, channels=channels)


def _prepare(src, cache, **kw):
    logs = []
    report = P.prepare(src, cache_root=cache, log=logs.append, **kw)
    return report, logs


@pytest.mark.parametrize("channels", [None, 1])
def test_prepared_copy_holds_exactly_the_in_memory_pixels_labels_and_counts(folder, tmp_path, channels):
    mem = _in_memory(folder.root, 8, channels)
    src = P.folder_source(folder.root, 8, channels or 0)
    report, _ = _prepare(src, tmp_path / "cache", workers=0)
    assert report.rebuilt and report.count == folder.readable == len(mem)
    assert report.skipped == folder.corrupt and report.upscaled == folder.smaller_than > 0
    ds = P.open_prepared(report.path)
    assert torch.equal(ds.x, mem.x) and torch.equal(ds.y, mem.y)
    assert ds.class_names == mem.class_names == ("a", "b") and ds.shape == mem.shape
    idx = torch.tensor([5, 0, 23, 5, 11])
    for a, b in zip(ds.batch(idx), mem.batch(idx), strict=True):
        assert torch.equal(a, b)


def test_worker_processes_write_the_same_bytes_as_one_process(folder, tmp_path):
    src = P.folder_source(folder.root, 8, 0)
    one, _ = _prepare(src, tmp_path / "one", workers=0)
    two, _ = _prepare(src, tmp_path / "two", workers=2)
    for name in (P.IMAGES, P.LABELS):
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes()


def test_fresh_copy_is_reused_untouched_and_a_changed_source_rebuilds_with_a_message(folder, tmp_path):
    cache = tmp_path / "cache"
    src = P.folder_source(folder.root, 8, 0)
    first, _ = _prepare(src, cache)
    stamp = (first.path / P.IMAGES).stat().st_mtime_ns
    again, logs = _prepare(src, cache)
    assert not again.rebuilt and logs == [] and (first.path / P.IMAGES).stat().st_mtime_ns == stamp
    assert P.prepared_info(first.path)["fresh"]

    # rewrite one image with other pixels: the copy is stale until rebuilt, then holds the new pixels
    target = folder.root / "a" / "img00.png"
    from PIL import Image
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    assert not P.prepared_info(first.path)["fresh"]
    rebuilt, logs = _prepare(src, cache)
    assert rebuilt.rebuilt and rebuilt.path == first.path
    assert len(logs) == 1 and "changed (1 modified); rebuilding" in logs[0]
    assert torch.equal(P.open_prepared(rebuilt.path).x[0], torch.full((3, 8, 8), 7, dtype=torch.uint8))

    (folder.root / "b" / "new.png").write_bytes(target.read_bytes())
    (folder.root / "a" / "img01.jpg").unlink()
    _, logs = _prepare(src, cache)
    assert "1 added, 1 removed" in logs[0]
    assert torch.equal(P.open_prepared(rebuilt.path).x, _in_memory(folder.root, 8).x)
    # another size is another copy; the first one stays
    other, _ = _prepare(P.folder_source(folder.root, 4, 0), cache)
    assert other.path != first.path and sorted(p.name for p in cache.iterdir()) == sorted(
        [first.path.name, other.path.name])


def test_folder_with_no_images_or_only_corrupt_ones_is_an_error_and_leaves_nothing(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no PNG/JPEG images found"):
        P.prepare(P.folder_source(tmp_path / "empty", 8, 0), cache_root=cache)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no readable PNG/JPEG images found .* \(3 unreadable\)"):
        P.prepare(P.folder_source(bad, 8, 0), cache_root=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(DataError, match="does not exist"):
        P.folder_source(tmp_path / "nope", 8, 0)
    with pytest.raises(DataError, match="needs image_size"):
        P.folder_source(bad, 0, 0)


def test_full_disk_fails_before_decoding_and_keeps_the_previous_copy(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    src = P.folder_source(folder.root, 8, 0)
    good, _ = _prepare(src, cache)
    before = (good.path / P.IMAGES).read_bytes()
    (folder.root / "a" / "img00.png").unlink()  # stale now: a rebuild is due

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    decoded = []
    monkeypatch.setattr(P.os, "posix_fallocate", no_space)
    monkeypatch.setattr(P, "_decode_chunk", lambda task: decoded.append(task))
    with pytest.raises(DataError, match=r"not enough disk space for the prepared copy .* needs .* MiB"):
        P.prepare(src, cache_root=cache, log=lambda m: None)
    assert decoded == []
    assert [p.name for p in cache.iterdir()] == [good.path.name]  # no temporary directory left
    assert (good.path / P.IMAGES).read_bytes() == before
    assert not P.prepared_info(good.path)["fresh"]  # the stale copy is not taken for the new source


def test_interrupted_prepare_leaves_only_a_temporary_directory_that_is_never_read(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    src = P.folder_source(folder.root, 8, 0)

    def killed(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "_decode_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(src, cache_root=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    # what a SIGKILLed build leaves: a temp dir of a dead process, even with a plausible manifest inside
    dead = cache / f".{src.key()}.tmp-999999999-1"
    dead.mkdir()
    (dead / P.MANIFEST).write_text(json.dumps({"format_version": P.FORMAT_VERSION, "count": 1}))
    logs = []
    report = P.prepare(src, cache_root=cache, log=logs.append)
    assert report.rebuilt and report.count == folder.readable
    assert not dead.exists() and any("interrupted prepare" in m for m in logs)
    assert [p.name for p in cache.iterdir()] == [report.path.name]


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_cli_prepare_info_and_one_line_errors(folder, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nname = "image-folder"\ndata_dir = "{folder.root}"\nimage_size = 8\n'
                   f'prepared_dir = "{tmp_path / "cache"}"\n')
    code, out, err = _cli(capsys, "data", "info", "--config", str(cfg))
    assert code == 2 and err.startswith("ddpmkit: error: ") and "data prepare" in err and err.count("\n") == 1
    code, out, err = _cli(capsys, "data", "prepare", "--config", str(cfg), "--no-progress")
    assert code == 0 and f"{folder.readable} images at 8x8" in out and f"{folder.corrupt} unreadable" in out
    assert f"{folder.smaller_than} image(s) smaller than 8x8 upscaled" in out
    code, out, _ = _cli(capsys, "data", "info", "--config", str(cfg), "--json")
    info = json.loads(out)
    assert code == 0 and info["count"] == folder.readable and info["classes"] == ["a", "b"] and info["fresh"]
    assert info["disk_bytes"] >= folder.readable * 3 * 64 and info["path"].startswith(str(tmp_path / "cache"))
    code, out, _ = _cli(capsys, "data", "info", "--config", str(cfg))
    assert "up to date" in out and "2 (a, b)" in out
    (tmp_path / "empty").mkdir()
    for sets, msg in ((f"data.data_dir={tmp_path / 'empty'}", "no PNG/JPEG images found"),
                      ("data.image_size=0", "needs image_size"),
                      ("data.name=digits", "held in memory")):
        code, out, err = _cli(capsys, "data", "prepare", "--config", str(cfg), "--set", sets)
        assert code == 2 and err.startswith("ddpmkit: error: ") and msg in err and err.count("\n") == 1, err


def test_storage_choice(tmp_path):
    assert P.resolve_storage("image-folder", "auto") == "prepared"
    assert P.resolve_storage("digits", "auto") == "memory"
    with pytest.raises(DataError, match="needs data.name = 'image-folder'"):
        P.resolve_storage("cifar10", "prepared")
    with pytest.raises(DataError, match="unknown data.storage"):
        P.resolve_storage("digits", "disk")


def test_data_info_of_an_in_memory_set(capsys):
    config = Path(__file__).resolve().parents[2] / "configs" / "digits.toml"
    code, out, _ = _cli(capsys, "data", "info", "--config", str(config), "--json")
    info = json.loads(out)
    assert code == 0 and info["storage"] == "memory" and info["size"] == 1438 and info["shape"] == [1, 8, 8]
    assert info["classes"] == [str(i) for i in range(10)]
