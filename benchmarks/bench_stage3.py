"""Stage-3 training throughput: training windows per second against the number of windows per step.

    python -m benchmarks.bench_stage3 --dataset data/tiny --batch-sizes 4 8 16 32 --threads 1
        # -> benchmarks/results/stage3_cpu.json

Trains the demo's MeshGraphNets (``experiments/flag_tiny.yaml``: latent 64, 6 blocks, rollout 8) on the dataset's
ground-truth training trajectories and times steps 25-29 (after the normaliser-only steps and warm-up) of a
Lightning ``fit`` per batch size. If a step cost mostly per-operation overhead, more windows per step would raise
windows per second; if it is compute-bound, windows per second stays flat. Also prints the top operators of three
training steps at the first batch size under ``torch.profiler``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import lightning as L
import torch

from clods_pl.stages.dynamics import DynamicsModule
from clods_pl.stages.dynamics_data import DynamicsDataModule

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = dict(latent=64, blocks=6, message_passing="native", rollout_length=8, noise_std=0.003, normalizer_steps=20,
             lr=1e-3, lr_min=1e-5, lr_decay_steps=2000)  # fmt: skip
TIMED = range(25, 30)


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.start = self.stop = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == TIMED.start:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == TIMED.stop - 1:
            self.stop = time.perf_counter()


def windows_per_second(
    dataset: str,
    batch_size: int,
    compile_mode: str | None = None,
    message_passing: str = "native",
    precision: str = "32-true",
) -> dict:
    L.seed_everything(0, verbose=False)
    timer = _StepTimer()
    data = DynamicsDataModule(dataset, source="gt", windows_per_epoch=batch_size * TIMED.stop, batch_size=batch_size)
    trainer = L.Trainer(max_steps=TIMED.stop, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=[timer], precision=precision)  # fmt: skip
    t0 = time.perf_counter()
    model = DynamicsModule(**{**MODEL, "message_passing": message_passing}, compile_mode=compile_mode)
    trainer.fit(model, datamodule=data)
    step = (timer.stop - timer.start) / len(TIMED)
    return {"batch_size": batch_size, "compile_mode": compile_mode, "message_passing": message_passing,
            "precision": precision, "ms_per_step": 1e3 * step,
            "windows_per_s": batch_size / step, "fit_s": time.perf_counter() - t0}  # fmt: skip


def profile(dataset: str, batch_size: int) -> str:
    module = DynamicsModule(**{**MODEL, "normalizer_steps": 0})
    data = DynamicsDataModule(dataset, source="gt", batch_size=batch_size, rollout_length=MODEL["rollout_length"])
    data.setup()
    batch = next(iter(data.train_dataloader()))
    opt = torch.optim.Adam(module.parameters(), 1e-3)

    def step() -> None:
        loss = module.rollout_loss(batch, noise=True, accumulate=False)[0]
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    with torch.profiler.profile() as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-mode", default=None, help="also time the first batch size with this torch.compile mode")
    ap.add_argument("--dgl", action="store_true", help="also time the first batch size with DGL message passing")
    ap.add_argument(
        "--precision",
        default=None,
        help="also time every batch size with this Trainer precision (e.g. bf16-mixed: CPU autocast)",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for bs in args.batch_sizes:
        rows.append(windows_per_second(args.dataset, bs))
        print(json.dumps(rows[-1]), flush=True)
        if args.precision:  # right after the float32 row of the same batch size: the two compare under one load
            rows.append(windows_per_second(args.dataset, bs, precision=args.precision))
            print(json.dumps(rows[-1]), flush=True)
    if args.compile_mode:
        rows.append(windows_per_second(args.dataset, args.batch_sizes[0], args.compile_mode))
        print(json.dumps(rows[-1]), flush=True)
    if args.dgl:
        rows.append(windows_per_second(args.dataset, args.batch_sizes[0], message_passing="dgl"))
        print(json.dumps(rows[-1]), flush=True)
    table = "" if args.no_profile else profile(args.dataset, args.batch_sizes[0])
    print(table)
    out = Path(args.out) if args.out else RESULTS / "stage3_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "profile": table}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
