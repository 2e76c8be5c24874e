"""Forward+backward time of every SSL loss, as ratios to exact EMI and as a fraction of a
ResNet-18 training step (batch 256, 32x32, torchvision resnet18) on the same device.

    python -m benchmarks.bench_losses [--quick] [--device cuda|cpu] [--out results/bench]

EMI runs with ridge=1e-3 so that every (d, N) in the grid is defined (N < 2d is common here);
Taylor EMI uses scale="power" (matrix products only: the "max_eig" rule calls eigvalsh, which
costs as much as the exact log-det). Times are medians over repeats, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import pandas as pd
import torch

from mitools.losses import build_loss
from mitools.timing import time_calls

CONFIGS: dict[str, tuple[str, dict]] = {
    "emi_exact": ("emi", {"ridge": 1e-3}),
    "emi_taylor2": ("emi", {"ridge": 1e-3, "logdet": "taylor", "order": 2, "scale": "power"}),
    "emi_taylor4": ("emi", {"ridge": 1e-3, "logdet": "taylor", "order": 4, "scale": "power"}),
    "emi_taylor8": ("emi", {"ridge": 1e-3, "logdet": "taylor", "order": 8, "scale": "power"}),
    "emi_symmetric_exact": ("emi", {"ridge": 1e-3, "form": "symmetric"}),
    "emi_exact_fp32": ("emi", {"ridge": 1e-3, "compute_dtype": torch.float32}),
    "mio": ("mio", {}),
    "simclr": ("simclr", {}),
    "barlow_twins": ("barlow_twins", {}),
    "vicreg": ("vicreg", {}),
    "byol": ("byol", {}),
    "corinfomax": ("corinfomax", {}),
    "mec": ("mec", {}),
}


def _time(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds per call."""
    return 1e3 * statistics.median(time_calls(fn, device, repeats))


def time_loss(name: str, cfg: dict, d: int, n: int, device: torch.device, repeats: int) -> float:
    loss = build_loss(name, check_finite=False, **cfg).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    base = torch.randn(n, d, generator=g)
    z1 = (base + 0.5 * torch.randn(n, d, generator=g)).to(device).requires_grad_(True)
    z2 = (base + 0.5 * torch.randn(n, d, generator=g)).to(device).requires_grad_(True)

    def step():
        z1.grad = z2.grad = None
        loss(z1, z2).backward()

    return _time(step, device, repeats)


def time_resnet18(device: torch.device, batch: int, repeats: int) -> float:
    import torchvision

    model = torchvision.models.resnet18(num_classes=128).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return _time(step, device, repeats)


def run(quick: bool, device: str | None = None, out: Path | None = None) -> pd.DataFrame:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dims = [128] if quick else [128, 512, 2048]
    batches = [256] if quick else [256, 1024]
    repeats = 2 if quick else 5
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in dims:
            for n in batches:
                for key, (name, cfg) in CONFIGS.items():
                    ms = time_loss(name, cfg, d, n, dev, repeats)
                    rows.append({"loss": key, "d": d, "batch": n, "ms": ms})
                    print(f"d={d:5d} N={n:5d} {key:22s} {ms:10.2f} ms", flush=True)
    df = pd.DataFrame(rows)
    ref = df[df["loss"] == "emi_exact"].set_index(["d", "batch"])["ms"]
    df["ratio_to_emi_exact"] = [r.ms / ref[(r.d, r.batch)] for r in df.itertuples()]
    resnet_ms = time_resnet18(dev, 256, 1 if quick else 3)
    df["resnet18_step_ms"] = resnet_ms
    df["fraction_of_resnet18_step"] = df["ms"] / resnet_ms
    df["device"] = str(dev)
    print(f"\nResNet-18 fwd+bwd+SGD step, batch 256, 32x32, {dev}: {resnet_ms:.1f} ms\n")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "bench_losses.csv", index=False)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d=128, N=256 only, 2 repeats")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_losses.csv")
    args = parser.parse_args(argv)
    run(args.quick, args.device, args.out)


if __name__ == "__main__":
    main()
