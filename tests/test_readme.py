"""The README's commands run: every `ddpmkit ...` line of its ```sh blocks, in order, with small sizes
(slow: DDPMKIT_SLOW=1); `make test` checks that each one parses as written.

Sizes are shrunk, never the commands: a training run gets the tiny U-Net and T = 20 appended
(`testing.tiny.tiny_overrides`; later --set values win), sample counts and step counts are capped,
and `RUN` is the run the README trained.  Lines that are not `ddpmkit` commands (make targets, the
2.5-hour Fashion-MNIST training behind the shipped model) are listed in SKIPPED with the reason.
"""

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
    ".venv/bin/ddpmkit train --config configs/fashion-mnist.toml": "the 150-minute training of the shipped model",
    ".venv/bin/ddpmkit export runs/fashion-mnist": "exports that 150-minute run over the shipped model",
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
