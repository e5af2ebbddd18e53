"""Diffusion stage at the quickstart size: train-step time of the register models vs the baseline.

    python benchmarks/bench_ldm.py

Builds ``AnatomicalLDMTask`` twice from ``configs/quickstart/ldm.yaml`` and
``configs/quickstart/ldm_baseline.yaml`` (with an untrained autoencoder of the quickstart
architecture: weights do not change the cost) and times full training steps (encode, forward,
losses, backward, AdamW step) on one fixed 64x64 batch of 16 phantom-like slices, with the
configs' options (``cache_latents``: the batch's latents are encoded once, as after a fit's
first epoch). Steps of the models alternate, so machine noise hits all alike; the ratios are of
medians. Register variants (``VARIANTS``): the quickstart's register LDM (read-only bank, the head
at 32 x 32 reading the autoencoder decoder at t = 0; its 500-step refinement after training is not
a step cost: the quickstart's stage times show it), the head on the latent grid (the release
before), the head at 64 x 64, the decoder-feature path also trained on a quarter of each batch at
t = 0 (one decoder pass over those samples), anatomy-conditioned
registers (self-conditioning: a no-grad first pass on half of the batches), ``registers.mode:
read_write`` and ``registers.supervision: attention``.

It also times the denoiser alone with two register designs: ours (slim cross-attention, no
feed-forward, decoder only) and MONAI's conditioning path (``with_conditioning=True``: a full
transformer block with self-attention, cross-attention and feed-forward at every attention level).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from anatldm.diffusion import training as ldm_stage
from anatldm.models.autoencoder_bundle import save_autoencoder_bundle
from anatldm.trainers import AnatomicalLDMTask

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, WARMUP = 50, 5
#: register variants on top of configs/quickstart/ldm.yaml (denoiser config group -> options)
VARIANTS = {"register": {},
            # the head of the release before 2026-12-07: on the latent grid, no decoder features, no refinement
            "latent_head": {"head": {"output_stride": None, "image_features": False, "refine_steps": 0}},
            # the head's logits at 64x64 (two learned x2 stages) instead of 32x32
            "image_head_stride1": {"head": {"output_stride": 1}},
            # the decoder-feature path trained in the steps too (a quarter of each batch at t = 0)
            "image_head_clean_share": {"head": {"clean_fraction": 0.25}},
            # (refinement and anatomy conditioning exclude each other: the head without decoder features here)
            "anatomy_conditioning": {"registers": {"anatomy_conditioning": True},
                                     "head": {"refine_steps": 0, "image_features": False}},
            "read_write": {"registers": {"mode": "read_write"}},
            "attention": {"registers": {"supervision": "attention"}},
            "read_write_attention": {"registers": {"mode": "read_write", "supervision": "attention"}},
            # claim v2's register arm (configs/claim/README.md, 2026-12-06): register dropout and the gradient balance
            "claim_v2": {"registers": {"dropout": 0.15}, "anatomy_loss": {"max_gradient_ratio": 2.0}}}


def _init_args(name: str) -> dict:
    return dict(yaml.safe_load((ROOT / "configs" / "quickstart" / name).read_text(encoding="utf-8"))["model"]["init_args"])


def _bundle(folder: Path) -> Path:
    vae = yaml.safe_load((ROOT / "configs" / "quickstart" / "vae.yaml").read_text(encoding="utf-8"))["model"]["init_args"]
    config = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": vae["channels"],
              "latent_channels": vae["latent_channels"], "num_res_blocks": vae["num_res_blocks"],
              "norm_num_groups": vae["norm_num_groups"], "attention_levels": vae["attention_levels"],
              "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    classes = ["background", "liver", "spleen", "kidney", "bone", "lung"]
    save_autoencoder_bundle(folder, AutoencoderKL(**config), config, 1.0, {"preset": "ct"}, classes, (64, 64))
    return folder


def _step_fn(task: AnatomicalLDMTask, batch: dict):
    optimizer = task.configure_optimizers()  # the task's own (fused) AdamW
    balance, count = task.gradient_balance, [0]

    def step() -> None:
        losses, _ = task._losses(batch)
        if balance is not None and count[0] % balance.every_n_steps == 0:  # the balance's two extra backward passes
            params = [p for p in task.denoiser.parameters() if p.requires_grad]
            ldm_stage.gradient_norm(losses["anatomy_loss"], params), ldm_stage.gradient_norm(losses["diffusion_loss"], params)
        count[0] += 1
        loss = torch.stack(list(losses.values())).sum()  # diffusion [+ anatomy] [+ register attention]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _alternate(steps: dict) -> dict[str, float]:
    times = {name: [] for name in steps}
    for round_index in range(ROUNDS + WARMUP):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _denoiser_designs(batch_size: int = 16) -> dict[str, float]:
    """Denoiser-only step time: no registers, our registers, MONAI's transformer conditioning."""
    args = _init_args("ldm.yaml")["denoiser"]
    registers = args["registers"]
    common = {"spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": args["channels"],
              "num_res_blocks": args["num_res_blocks"], "attention_levels": args["attention_levels"],
              "norm_num_groups": args["norm_num_groups"], "num_head_channels": args["num_head_channels"]}
    from anatldm.models.denoiser import AnatomicalDenoiser

    plain = AnatomicalDenoiser(num_registers=0, **{k: v for k, v in common.items() if k != "out_channels"})
    ours = AnatomicalDenoiser(num_registers=registers["num_registers"], register_dim=registers["dim"],
                              register_levels=registers["levels"], register_heads=registers["heads"],
                              **{k: v for k, v in common.items() if k != "out_channels"})
    monai = DiffusionModelUNet(with_conditioning=True, cross_attention_dim=registers["dim"], **common)
    bank = torch.nn.Parameter(torch.randn(registers["num_registers"], registers["dim"]) * 0.02)
    x, t = torch.randn(batch_size, 4, 16, 16), torch.randint(0, 1000, (batch_size,))

    def make(forward, parameters):
        optimizer = torch.optim.AdamW(list(parameters), lr=1e-4)

        def step():
            loss = forward().square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    return _alternate({
        "plain": make(lambda: plain(x, t).sample, plain.parameters()),
        "ours": make(lambda: ours(x, t).sample, ours.parameters()),
        "monai": make(lambda: monai(x, t, context=bank.expand(batch_size, -1, -1)),
                      [*monai.parameters(), bank]),
    })


def run() -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(_bundle(Path(tmp)))
        tasks = {}
        for name, groups in VARIANTS.items():
            args = _init_args("ldm.yaml")
            for group, options in groups.items():  # a denoiser group, or a top-level one (anatomy_loss)
                (args["denoiser"][group] if group in args["denoiser"] else args[group]).update(options)
            tasks[name] = AnatomicalLDMTask(**{**args, "autoencoder": bundle})
        register = tasks["register"]
        baseline = AnatomicalLDMTask(**{**_init_args("ldm_baseline.yaml"), "autoencoder": bundle})
        images = torch.rand(16, 1, 64, 64) * 2 - 1
        masks = torch.randint(0, 6, (16, 64, 64))
        # named slices: with the configs' cache_latents, each slice is encoded on its first step only
        batch = {"image": images, "mask": masks, "subject": [f"s{i}" for i in range(16)],
                 "position": torch.arange(16)}
        medians = _alternate({"baseline": _step_fn(baseline, batch),
                              **{name: _step_fn(task, batch) for name, task in tasks.items()}})
    designs = _denoiser_designs()
    params = {name: sum(p.numel() for p in task.denoiser.parameters()) for name, task in
              (("register", register), ("baseline", baseline))}
    note = f"quickstart size, batch 16, {torch.get_num_threads()} threads, median of {ROUNDS}"
    return [
        {"benchmark": "ldm/train_step_baseline", "value": medians["baseline"] * 1e3, "unit": "ms", "note": note},
        {"benchmark": "ldm/train_step_register", "value": medians["register"] * 1e3, "unit": "ms", "note": note},
        {"benchmark": "ldm/register_over_baseline", "value": medians["register"] / medians["baseline"],
         "unit": "x", "note": "target <= 1.10 on CPU (registers + head + anatomy loss)"},
        *[{"benchmark": f"ldm/{name}_over_baseline", "value": medians[name] / medians["baseline"], "unit": "x",
           "note": "target <= 1.10 on CPU (" + ", ".join(f"{g}.{k}: {v}" for g, o in VARIANTS[name].items()
                                                         for k, v in o.items()) + ")"}
          for name in VARIANTS if name != "register"],
        {"benchmark": "ldm/extra_parameters", "value": params["register"] - params["baseline"], "unit": "params",
         "note": f"of {params['baseline']} in the baseline denoiser"},
        {"benchmark": "ldm/denoiser_slim_registers", "value": designs["ours"] / designs["plain"], "unit": "x",
         "note": "denoiser step, our slim decoder cross-attention vs no registers"},
        {"benchmark": "ldm/denoiser_monai_transformer", "value": designs["monai"] / designs["plain"], "unit": "x",
         "note": "denoiser step, MONAI with_conditioning (transformer block + FF) vs no registers"},
    ]


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for row in run():
        print(f"{row['benchmark']:<34} {row['value']:>10.4g} {row['unit']:<7} {row['note']}")
