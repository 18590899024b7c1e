"""Packaging: the wheel holds what an installed ddpmkit needs (configs, shipped models, classifiers),
and the floors in pyproject.toml are the ones the code needs.

The wheel is built from a copy of the sources in a temp dir (the repository is left untouched) and run
from its unpacked files, with the working directory elsewhere, so nothing of the checkout is found.
"""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import ddpmkit
from ddpmkit.config import shipped_configs
from ddpmkit.testing.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = (tmp / "dist").glob("ddpmkit-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp / "work"
    work.mkdir()
    return wheel, site, work


def _run(site: Path, work: Path, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_runs_from_its_files_and_finds_its_configs_and_models(unpacked_wheel):
    wheel, site, work = unpacked_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_configs():
        assert f"ddpmkit/configs/{name}.toml" in names
    assert {"ddpmkit/pretrained/fashion-mnist/ema.safetensors", "ddpmkit/py.typed"} <= names
    where = _run(site, work, "-c", "import ddpmkit; print(ddpmkit.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where  # the wheel's copy, not the checkout's
    version = _run(site, work, "-m", "ddpmkit", "--version")
    assert version.stdout.strip() == f"ddpmkit {ddpmkit.__version__}" and wheel.name.startswith(
        f"ddpmkit-{ddpmkit.__version__}-")
    listed = _run(site, work, "-m", "ddpmkit", "configs")
    assert {line.split()[0] for line in listed.stdout.splitlines()[:-1]} == set(shipped_configs()), listed
    # Train from a shipped config by name, sample it and the shipped model: all from the wheel's files.
    train = _run(site, work, "-m", "ddpmkit", "train", "--config", "digits", "--no-progress",
                 *[a for s in tiny_overrides(work / "run", steps=2) for a in ("--set", s)])
    assert train.returncode == 0 and "finished 2 steps" in train.stdout, train.stderr[-2000:]
    for ckpt in (str(work / "run"), "pretrained:fashion-mnist"):
        s = _run(site, work, "-m", "ddpmkit", "sample", "--checkpoint", ckpt, "-n", "2", "--steps", "2",
                 "--out", "s.png", "--no-progress")
        assert s.returncode == 0 and (work / "s.png").is_file(), s.stderr[-2000:]


@pytest.mark.slow
def test_installed_demo_runs(unpacked_wheel):
    _, site, work = unpacked_wheel
    demo = _run(site, work, "-m", "ddpmkit", "demo", "--steps", "2", "--out", "demo", "--no-progress", timeout=900)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert all((work / "demo" / f"{n}.png").is_file() for n in ("samples", "trajectory", "forward", "loss"))


def test_configs_by_name_list_and_copy(tmp_path, capsys, monkeypatch):
    from ddpmkit.cli import main
    from ddpmkit.config import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: names resolve to the package's files
    assert load_config("digits") == load_config("configs/digits.toml") == load_config(ROOT / "configs" / "digits.toml")
    assert main(["configs"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]} == set(shipped_configs()) >= {
        "digits", "toy2d", "fashion-mnist", "cifar10-ddpm", "cifar10-iddpm"}
    assert main(["configs", "toy2d", "--out", "mine.toml"]) == 0
    assert (tmp_path / "mine.toml").read_text() == shipped_configs()["toy2d"].read_text()
    (tmp_path / "mine.toml").write_text("# edited\n")
    assert main(["configs", "toy2d", "--out", "mine.toml"]) == 2  # never overwrites
    assert (tmp_path / "mine.toml").read_text() == "# edited\n"
    assert main(["train", "--config", "no-such-config"]) == 2
    assert "shipped configs" in capsys.readouterr().err


def test_declared_floors_are_the_code_s():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"  # config.py imports tomllib, new in 3.11
    assert "torch>=2.4" in meta["dependencies"]  # the trainer's AdamW(fused=True) on CPU arrived in torch 2.4
    assert "fused=True" in (ROOT / "src" / "ddpmkit" / "training" / "trainer.py").read_text()
