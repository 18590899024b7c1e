"""The config files of google/ddpm-cifar10-32 (the DDPM authors' CIFAR-10 model on the Hugging Face Hub),
reproduced so that tests can build its pipeline layout with random weights and no download.

Values as published: ``unet/config.json`` (UNet2DModel, 35,746,307 parameters),
``scheduler/scheduler_config.json`` (DDPMScheduler: linear 1e-4 -> 0.02, T = 1000, fixed_small,
clip_sample; the keys of diffusers 0.0.x/0.1.x, so no prediction_type: epsilon by default) and
``model_index.json`` (a DDPMPipeline of the two).
"""

GOOGLE_DDPM_CIFAR10_UNET = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

GOOGLE_DDPM_CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}

GOOGLE_DDPM_CIFAR10_INDEX = {
    "_class_name": "DDPMPipeline",
    "_diffusers_version": "0.1.1",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
}
