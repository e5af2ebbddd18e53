"""Tiny configurations shared by test modules (one place; test files do not import each other's).

``TINY_DENOISER`` / ``TINY_DATA``: an ``AnatomicalLDMTask`` on 32x32 CT-phantom slices;
``VAE_MODEL`` / ``VAE_DATA``: an ``AutoencoderTask`` on the same kind of data.
"""

TINY_DENOISER = {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 8,
                 "num_head_channels": 8, "register_dim": 16, "register_levels": [0, 1], "head_levels": [0, 1],
                 "head_channels": 16, "num_inference_steps": 3, "preview_every_n_epochs": 1,
                 "num_preview_samples": 2}
TINY_DATA = {"source": "phantom", "num_subjects": 4, "num_slices": 8, "image_size": 32, "batch_size": 4,
             "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25], "min_foreground": 0.0}

VAE_MODEL = {"channels": [8, 16], "norm_num_groups": 4, "latent_channels": 3, "num_res_blocks": 1,
             "discriminator_channels": 8, "discriminator_layers": 2, "adversarial_warmup_steps": 1,
             "scale_factor_batches": 3}
VAE_DATA = {"source": "phantom", "phantom_family": "ct_abdomen", "num_subjects": 4, "num_slices": 8,
            "image_size": 32, "batch_size": 3, "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25],
            "min_foreground": 0.0}
