"""train.compile: the network's forward and backward run through torch.compile; the optimizer, the EMA and
the checkpoints still see the plain module, resume stays bit-exact, and a compiler that fails is a
one-line error."""

from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.config import load_config
from ddpmkit.errors import UserError
from ddpmkit.testing.tiny import tiny_overrides
from ddpmkit.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits.toml"


def _cfg(out, steps, compile_on, **extra):
    return load_config(DIGITS, tiny_overrides(out, steps, **{"train.compile": str(compile_on).lower(), **extra}))


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend (dynamo + AOT autograd, no C++ compile: fast), recording
    what it was asked to compile."""
    real, calls = torch.compile, []

    def compile_(module, **kwargs):
        calls.append(module)
        return real(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def test_compiled_training_matches_eager_and_resumes_bit_exactly(tmp_path, aot_eager):
    K = 2
    train(_cfg(tmp_path / "eager", 2 * K, False), progress=False)
    assert aot_eager == []  # off by default: nothing compiled
    trainer = Trainer(_cfg(tmp_path / "full", 2 * K, True), progress=False)
    assert len(aot_eager) == 1 and aot_eager[0] is trainer.model  # the network itself (no DDP here)
    trainer.train()
    half = _cfg(tmp_path / "half", 2 * K, True)
    train(half, progress=False, max_steps=K)
    train(half, resume=True, progress=False)
    a, b, e = (load_checkpoint(tmp_path / n) for n in ("full", "half", "eager"))
    assert a.model.keys() == e.model.keys() and not any(k.startswith("_orig_mod") for k in a.model)
    for part in ("model", "ema"):
        for k, v in getattr(a, part).items():
            assert torch.equal(v, getattr(b, part)[k]), f"resume with compile: {part}.{k} differs"
            torch.testing.assert_close(v, getattr(e, part)[k], rtol=1e-4, atol=1e-5)  # same function as eager


def test_a_compiler_that_fails_is_a_one_line_error(tmp_path, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    class Broken(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            raise TorchDynamoException("InductorError: CppCompileError: C++ compile error\nmore lines")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    trainer = Trainer(_cfg(tmp_path / "run", 2, True), progress=False)
    with pytest.raises(UserError) as err:
        trainer.train()
    msg = str(err.value)
    assert "\n" not in msg and "set train.compile = false" in msg and "CppCompileError" in msg
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_an_error_after_the_first_step_is_not_blamed_on_the_compiler(tmp_path, aot_eager):
    from torch._dynamo.exc import TorchDynamoException

    trainer = Trainer(_cfg(tmp_path / "run", 3, True), progress=False)
    trainer.train(max_steps=1)  # compiled, and checked
    with pytest.raises(TorchDynamoException, match="a recompile failed"), trainer._compile_errors():
        raise TorchDynamoException("a recompile failed")
