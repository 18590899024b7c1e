"""The README's commands run: every `ddpmkit ...` line of its ```sh blocks, in order, with small sizes
(slow: DDPMKIT_SLOW=1); `make test` checks that each one parses as written.

Sizes are shrunk, never the commands: a training run gets the tiny U-Net and T = 20 appended
(`testing.tiny.tiny_overrides`; later --set values win), sample counts and step counts are capped,
`cpu-profile` times the digits preset once a variant, and `RUN` is the run the README trained.  Lines
that are not `ddpmkit` commands (make targets, the 2.5-hour Fashion-MNIST training behind the shipped
model) are listed in SKIPPED with the reason.
"""

import importlib.util
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.testing.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {  # line prefix -> why it is not run here
    "make ": "a make target (make test runs this suite; make demo / results are long runs)",
    ".venv/bin/ddpmkit train --config configs/fashion-mnist.toml": "the 165-minute training of the shipped model",
    ".venv/bin/ddpmkit export runs/fashion-mnist": "exports that 165-minute run over the shipped model",
    **dict.fromkeys(["ddpmkit data prepare --config configs/image-folder.toml --set data.data_dir=PHOTOS",
                     "ddpmkit data info --config configs/image-folder.toml --set data.data_dir=PHOTOS",
                     "ddpmkit train --config configs/image-folder.toml --set data.data_dir=PHOTOS"],
                    "needs your folder of photos (PHOTOS); tests/data/test_prepared.py runs data prepare / info "
                    "and tests/training/test_trainer.py trains on a synthetic folder"),
    **dict.fromkeys(["ddpmkit compress IMAGES --checkpoint pretrained:fashion-mnist",
                     "ddpmkit decompress x.ddpm --checkpoint pretrained:fashion-mnist"],
                    "needs your 28x28 grey images (IMAGES); tests/coding/test_codec.py runs compress and "
                    "decompress on a tiny run"),
}
CAPS = {"-n": 4, "--steps": 3}  # at most this many samples / sampler steps
AT_LEAST = {("fid", "-n"): 12}  # FID needs more samples than its k = 5 neighbours and a covariance


def readme_commands() -> list[str]:
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        line = line.split("  #")[0].strip()
        if inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


def small(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a in CAPS and out[i + 1].isdigit():
            cap = AT_LEAST.get((out[1] if out[0] == "eval" else out[0], a), CAPS[a])
            out[i + 1] = str(min(int(out[i + 1]), cap))
    out = ["runs/d" if a == "RUN" else a for a in out]
    if out[0] == "train":
        out += [x for s in tiny_overrides("unused") if not s.startswith("run.out_dir") for x in ("--set", s)]
        out += ["--no-progress"]
    if out[0] == "cpu-profile":  # one timed run a variant of the digits preset, not minutes of presets
        out += ["--case", "digits:2", "--repeats", "1"]
    if out[0] in ("sample", "eval") and "--no-progress" not in out:
        out.append("--no-progress")
    return out


@pytest.mark.slow  # ~2 min on the shared 2-core machine; test_readme_command_parses is the short version
def test_every_readme_command_runs_with_small_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path / "cache"))
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save("photo.png")
    # `runs/c`, the README's class-conditional run
    assert main(small(["train", "--config", "configs/digits.toml", "--set", "run.out_dir=runs/c",
                       "--set", "data.class_conditional=true"])) == 0
    ran = 0
    for line in readme_commands():
        if any(line.startswith(p) for p in SKIPPED):
            continue
        argv = shlex.split(line)
        assert argv[0] == "ddpmkit", f"README line is neither a ddpmkit command nor skipped with a reason: {line}"
        assert main(small(argv[1:])) == 0, line
        ran += 1
    assert ran >= 16  # the README's 16 ddpmkit commands when this test was written
    for made in ("grid.png", "x.npy", "threes.png", "forward.png", "my-model/state.json", "my-pipe/model_index.json",
                 "pipe.png", "fashion.png", "loss.png", "schedules.png", "nll.json", "rd"):
        assert (tmp_path / made).exists(), made


@pytest.mark.parametrize("line", [line for line in readme_commands() if line.startswith("ddpmkit ")])
def test_readme_command_parses(line, capsys):
    """Every README command is accepted by the parser as written (full sizes; parsing only)."""
    from ddpmkit.cli import build_parser

    build_parser().parse_args(shlex.split(line)[1:])


# --- the README's ```python blocks ------------------------------------------------------------------

# README text -> what the test runs instead (each must occur: a README edit that drops one fails here).
# Sizes only: the shipped Fashion-MNIST model becomes a tiny digits run (T = 1000, as the model has,
# so diffusers' DDPMPipeline runs its default 1000 steps), training gets the tiny U-Net.
PY_SUBSTITUTIONS = {
    '"pretrained:fashion-mnist"': "TINY_RUN",
    '"train.steps=2000"]': '"train.steps=3", *TINY_SETS]',
}
PY_CAPS = {r"(?<![\w.])steps=(\d+)": 3, r"num_inference_steps=(\d+)": 3, r"pipe\((\d+)": 2,
           r"batch_size=(\d+)": 2, r"sample\(\"dpm\+\+\", net, process, \((\d+)": 2}


def readme_python_blocks() -> list[str]:
    blocks, current = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if current is not None:
                blocks.append("\n".join(current))
                current = None
            elif line.strip() == "```python":
                current = []
            continue
        if current is not None:
            current.append(line)
    return blocks


def side_by_side_columns(block: str) -> dict[str, str] | None:
    """A block headed ``# diffusers    # ddpmkit`` -> each column's code (lines above the header go to both)."""
    lines = block.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("# diffusers") and "# ddpmkit" in line), None)
    if head is None:
        return None
    col = lines[head].index("# ddpmkit")
    common, left, right = lines[:head], [], []
    for line in lines[head + 1:]:
        if len(line) > col and line[col - 1] != " ":  # a long left-column line with nothing on the right
            left.append(line)
            continue
        left.append(line[:col].rstrip())
        right.append(line[col:])
    return {"diffusers": "\n".join(common + left), "ddpmkit": "\n".join(common + right)}


def small_python(code: str) -> str:
    import re

    for text, instead in PY_SUBSTITUTIONS.items():
        code = code.replace(text, instead)
    for pattern, cap in PY_CAPS.items():
        code = re.sub(pattern, lambda m, cap=cap: m.group(0)[:m.start(1) - m.start(0)] + str(min(int(m.group(1)), cap)),
                      code)
    return code


def test_readme_python_blocks_are_found_and_substituted():
    blocks = readme_python_blocks()
    assert len(blocks) >= 4
    text = "\n".join(blocks)
    for needle in PY_SUBSTITUTIONS:
        assert needle in text, f"README no longer contains {needle!r}: update PY_SUBSTITUTIONS"
    assert sum(side_by_side_columns(b) is not None for b in blocks) == 1
    assert small_python('pipe(16, steps=50); x.steps=9; sample("dpm++", net, process, (16, 1)') == \
        'pipe(2, steps=3); x.steps=9; sample("dpm++", net, process, (2, 1)'


def test_readme_python_blocks_run_with_small_sizes(tmp_path, monkeypatch, single_torch_thread):
    """Every ```python block of the README runs, in order, each in a fresh namespace, in one directory (the
    Library block writes the my-pipe that the diffusers comparison loads); the side-by-side block runs
    its ddpmkit column, and its diffusers column when diffusers is installed."""
    import shutil

    from ddpmkit.config import load_config
    from ddpmkit.training.trainer import train

    monkeypatch.chdir(tmp_path)
    tiny_sets = tiny_overrides("unused", 4, **{"diffusion.timesteps": 1000})[1:]
    train(load_config("digits", ['run.out_dir="tiny"', *tiny_sets]), progress=False)
    env = {"TINY_RUN": str(tmp_path / "tiny"), "TINY_SETS": tiny_sets}
    ran = []
    for i, block in enumerate(readme_python_blocks()):
        columns = side_by_side_columns(block)
        if columns is None:
            exec(compile(small_python(block), f"README python block {i}", "exec"), dict(env))
            ran.append(i)
            continue
        for side, code in columns.items():
            if side == "diffusers" and importlib.util.find_spec("diffusers") is None:
                continue
            where = tmp_path / f"side-{side}"
            where.mkdir()
            shutil.copytree("my-pipe", where / "my-pipe")
            monkeypatch.chdir(where)
            exec(compile(small_python(code), f"README python block {i} ({side})", "exec"), dict(env))
            assert (where / "out" / "model_index.json").is_file()
            monkeypatch.chdir(tmp_path)
            ran.append((i, side))
    assert len(ran) >= 5, ran
    for made in ("my-model", "my-pipe/model_index.json", "mine", "runs/mine/config.toml"):
        assert (tmp_path / made).exists(), made
