"""Seconds-long training set-ups used by the test suite (and handy for trying the CLI)."""

TINY_UNET = "{ ch = 8, ch_mult = [1, 2], num_res_blocks = 1, attn_resolutions = [4], num_heads = 2, norm_groups = 4 }"


def tiny_overrides(out_dir, steps: int = 4, **extra) -> list[str]:
    """``--set`` overrides for a digits run with a tiny U-Net and T = 20."""
    sets = [f'run.out_dir="{out_dir}"', f"train.steps={steps}", "train.batch_size=8", "train.log_every=2",
            "train.checkpoint_every=0", "train.sample_n=4", "train.sample_steps=3", "diffusion.timesteps=20",
            f"model.options={TINY_UNET}"]
    return sets + [f"{k}={v}" for k, v in extra.items()]


def toy_overrides(out_dir, steps: int, **extra) -> list[str]:
    """``--set`` overrides for a two-moons run with a tiny MLP and T = 50."""
    sets = [f'run.out_dir="{out_dir}"', "data.name=two-moons", "data.n=512", "model.kind=mlp", "model.preset=toy2d",
            "model.options={ hidden = 32, num_layers = 2 }", "diffusion.timesteps=50", f"train.steps={steps}",
            "train.batch_size=16", "train.log_every=2", "train.checkpoint_every=0", "train.sample_n=8",
            "train.sample_steps=3", "train.warmup=3", "train.lr=1e-3"]
    return sets + [f"{k}={v}" for k, v in extra.items()]
