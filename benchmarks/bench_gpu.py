"""GPU, full size (256x256 slices -> 3x64x64 latents), bf16 autocast: LDM train step and sampling.

    python benchmarks/bench_gpu.py [--out results.json]
    python benchmarks/bench_gpu.py --device cpu --image-size 32 --batch 2 --rounds 2   # the CPU dry run


The denoiser sizes are those of ``configs/ldm.yaml`` / ``configs/ldm_baseline.yaml`` and the
autoencoder those of ``configs/vae.yaml`` (random weights: the cost does not depend on them).
A train step is what ``AnatomicalLDMTask.training_step`` does on the GPU: frozen encoder,
noising, denoiser forward, diffusion MSE + anatomy Dice-CE on 256x256 masks, backward, fused
AdamW. Steps of the register model and the baseline alternate; times come from CUDA events
(median). Model FLOP utilisation = counted FLOPs of a step (torch.utils.flop_counter) /
step time / dense bf16 peak (``PEAK_BF16``; no peak is known for a CPU, so MFU is NaN there).
Sampling: DDIM-50 and DPM-Solver++ SDE-20 images/s including decoding. Peak memory is CUDA's
allocator peak (NaN on a CPU). ``--device cpu`` runs the same steps on a CPU (``make
device-check DRY_RUN=1``); without it a machine without CUDA returns one row saying so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml
from monai.networks.nets import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

from anatldm.diffusion import make_sampler, make_train_scheduler, sample_latents
from anatldm.diffusion.sampling import initial_noise
from anatldm.losses import AnatomyLoss, AnatomyLossConfig
from anatldm.models.denoiser import AnatomicalDenoiser, DenoiserConfig

ROOT = Path(__file__).resolve().parents[1]
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's datasheets: H100 / H200 SXM
# 989.4 TFLOPS (the datasheets' 1,979 is with 2:4 sparsity), A100 312 TFLOPS.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
BATCH, IMAGE, NUM_CLASSES = 32, 256, 6


def _args(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))["model"]["init_args"]


def _denoiser(config: str) -> AnatomicalDenoiser:
    a = _args(config)
    head = AnatomyLossConfig(**a.get("anatomy_loss", {})).enabled
    return AnatomicalDenoiser.from_config(DenoiserConfig(**a["denoiser"]), spatial_dims=2, in_channels=3,
                                          num_classes=NUM_CLASSES if head else 0)


def _autoencoder() -> AutoencoderKL:
    a = _args("vae.yaml")
    return AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=a["channels"],
                         latent_channels=a["latent_channels"], num_res_blocks=a["num_res_blocks"],
                         norm_num_groups=a["norm_num_groups"], attention_levels=a["attention_levels"],
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def _train_step(denoiser, autoencoder, scheduler, images, masks):
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4, fused=True)
    anatomy_loss = AnatomyLoss()

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                latents = autoencoder.encode_stage_2_inputs(images)
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (latents.shape[0],), device=latents.device)
            out = denoiser(scheduler.add_noise(latents, noise, t), t, mask_size=masks.shape[1:])
            loss = torch.nn.functional.mse_loss(out.sample.float(), noise.float())
            if out.anatomy_logits is not None:
                loss = loss + 2.0 * anatomy_loss(out.anatomy_logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _time(steps: dict, rounds: int = 30, warmup: int = 8) -> dict[str, float]:
    """Median seconds of each step, the steps alternating; CUDA events on a GPU, a wall clock otherwise."""
    times = {name: [] for name in steps}
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    for index in range(rounds + warmup):
        for name, step in steps.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                began = time.perf_counter()
                step()
                seconds = time.perf_counter() - began
            if index >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def _flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def run(device: str = "cuda", batch: int = BATCH, image: int = IMAGE, rounds: int = 30, warmup: int = 8,
        ddim_steps: int = 50, sde_steps: int = 20) -> list[dict]:
    """The benchmark's rows.

    Args:
        device: ``cuda`` (the benchmark) or ``cpu`` (the dry run: the same steps, wall-clock timed).
        batch: slices per train step and per sampling batch.
        image: slice side in pixels (latents are ``image / 4``).
        rounds: timed train steps per model (sampling: a tenth, at least one).
        warmup: untimed train steps per model first.
        ddim_steps: steps of the DDIM sampler.
        sde_steps: steps of the DPM-Solver++ SDE sampler.
    """
    if device == "cuda" and not torch.cuda.is_available():
        return [{"benchmark": "gpu", "value": 0, "unit": "-", "note": "skipped: no CUDA device"}]
    torch.manual_seed(0)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.cuda.init()
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    autoencoder = _autoencoder().to(device).eval().requires_grad_(False)
    scheduler = make_train_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    images = torch.rand(batch, 1, image, image, device=device) * 2 - 1
    masks = torch.randint(0, NUM_CLASSES, (batch, image, image), device=device)
    models = {"register": _denoiser("ldm.yaml").to(device), "baseline": _denoiser("ldm_baseline.yaml").to(device)}
    steps = {k: _train_step(m, autoencoder, scheduler, images, masks) for k, m in models.items()}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    medians = _time(steps, rounds=rounds, warmup=warmup)
    train_memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    size = f"{name}, bf16 autocast, batch {batch}, {image}x{image}"
    rows = []
    for key in ("baseline", "register"):
        flops = _flops(steps[key])
        rows += [
            {"benchmark": f"gpu/train_step_{key}", "value": medians[key] * 1e3, "unit": "ms", "note": size},
            {"benchmark": f"gpu/train_samples_per_s_{key}", "value": batch / medians[key], "unit": "samples/s",
             "note": "one device"},
            {"benchmark": f"gpu/train_flops_{key}", "value": flops, "unit": "FLOP",
             "note": "one train step, torch.utils.flop_counter (forward + backward)"},
            {"benchmark": f"gpu/mfu_{key}", "value": flops / medians[key] / peak if peak else float("nan"),
             "unit": "fraction", "note": f"{flops / 1e12:.3f} TFLOP per step / dense bf16 peak {peak}"},
        ]
    rows += [
        {"benchmark": "gpu/register_over_baseline", "value": medians["register"] / medians["baseline"],
         "unit": "x", "note": "target <= 1.05 on GPU"},
        {"benchmark": "gpu/peak_memory_train", "value": train_memory, "unit": "GiB",
         "note": "CUDA allocator peak over the train steps of both models (NaN on a CPU)"},
    ]
    latent = (3, image // 4, image // 4)
    for key, model in models.items():
        model.eval()
        for sampler, count in (("ddim", ddim_steps), ("dpm_solver++_sde", sde_steps)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

            def sample(model=model, sampler=sampler, count=count):
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                    noise = initial_noise(range(batch), latent, device)
                    out = sample_latents(model, make_sampler(sampler, scheduler), noise, count, mask_size=(image, image))
                    autoencoder.decode_stage_2_outputs(out.latents)
            seconds = _time({"s": sample}, rounds=max(1, rounds // 10), warmup=1)["s"]
            peak_memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            rows += [
                {"benchmark": f"gpu/sample_{sampler}{count}_{key}", "value": batch / seconds, "unit": "images/s",
                 "note": f"batch {batch}, with decoding"},
                {"benchmark": f"gpu/peak_memory_{sampler}{count}_{key}", "value": peak_memory, "unit": "GiB",
                 "note": "CUDA allocator peak while sampling (NaN on a CPU)"},
            ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--image-size", type=int, default=IMAGE)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--sde-steps", type=int, default=20)
    options = parser.parse_args()
    results = run(options.device, options.batch, options.image_size, options.rounds, options.warmup,
                  options.ddim_steps, options.sde_steps)
    for row in results:
        print(f"{row['benchmark']:<36} {row['value']:>10.4g} {row['unit']:<10} {row['note']}")
    if options.out:
        options.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
