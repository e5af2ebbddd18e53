"""Tiny configurations shared by test modules (one place; test files do not import each other's).

``TINY_LDM`` / ``TINY_DATA``: an ``AnatomicalLDMTask`` on 32x32 CT-phantom slices (:func:`ldm_args`
overrides its nested settings); ``VAE_MODEL`` / ``VAE_DATA``: an ``AutoencoderTask`` on the same
kind of data.
"""

import copy

TINY_LDM = {"denoiser": {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 8,
                         "num_head_channels": 8, "registers": {"dim": 16, "levels": [0, 1]},
                         "head": {"levels": [0, 1], "channels": 16}},
            "training": {"preview_every_n_epochs": 1, "num_preview_samples": 2},
            "sampling": {"num_inference_steps": 3}}
TINY_DATA = {"source": "phantom", "num_subjects": 4, "num_slices": 8, "image_size": 32, "batch_size": 4,
             "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25], "min_foreground": 0.0}

VAE_MODEL = {"channels": [8, 16], "norm_num_groups": 4, "latent_channels": 3, "num_res_blocks": 1,
             "discriminator_channels": 8, "discriminator_layers": 2, "adversarial_warmup_steps": 1,
             "scale_factor_batches": 3}
VAE_DATA = {"source": "phantom", "phantom_family": "ct_abdomen", "num_subjects": 4, "num_slices": 8,
            "image_size": 32, "batch_size": 3, "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25],
            "min_foreground": 0.0}


def ldm_args(base: dict | None = None, **overrides) -> dict:
    """``AnatomicalLDMTask`` init args: ``base`` (default :data:`TINY_LDM`) with ``overrides`` by
    path, ``__`` between groups: ``ldm_args(denoiser__registers__num_registers=0, anatomy_loss__weight=0.0)``."""
    args = copy.deepcopy(TINY_LDM if base is None else base)
    for name, value in overrides.items():
        *groups, leaf = name.split("__")
        target = args
        for group in groups:
            target = target.setdefault(group, {})
        target[leaf] = value
    return args
