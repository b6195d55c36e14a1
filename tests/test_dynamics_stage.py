"""Stage 3: trajectory sources, windows, rollout training, checkpoints with normalizers."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from clods_pl.dynamics.synthetic import wave_dataset
from clods_pl.errors import ClodsError, DatasetError
from clods_pl.stages.dynamics import DynamicsModule, exponential_lr_factor, load_dynamics_model
from clods_pl.stages.dynamics_data import (
    DynamicsDataModule,
    FixedWindows,
    collate_windows,
    load_mesh_cache,
    load_trajectories,
    parse_source,
)
from clods_pl.utils.files import atomic_savez


def _write_cache(folder, name, verts, frames_done):
    from clods_pl.stages.mesh_cache import MeshCache

    T = verts.shape[0]
    verts = np.array(verts, dtype=np.float32)
    verts[frames_done:] = np.nan
    MeshCache(
        folder / f"{name}.npz",
        verts,
        np.zeros((1, 3), np.int64),
        frames_done,
        np.zeros(T, np.float32),
        np.zeros(T, np.float32),
        np.zeros(T, np.int64),
        "h",
    ).save()


def test_sources_gt_n_mixed_and_recovered(tmp_path):
    ds = wave_dataset(train=3)
    names = ds.names("train")
    for n in names:
        _write_cache(tmp_path, n, ds.trajectory(n).gt_verts + 1.0, 16)
    gt2 = load_trajectories(ds, names, "gt:2")
    assert [t.name for t in gt2] == names[:2] and all(t.source == "gt" for t in gt2)
    mixed = load_trajectories(ds, names, "mixed:1", str(tmp_path))
    assert [t.source for t in mixed] == ["gt", "recovered", "recovered"]
    rec = load_trajectories(ds, names, "recovered", str(tmp_path))
    nt = rec[0].node_type
    assert torch.allclose(rec[0].verts[:, nt == 0], torch.as_tensor(ds.trajectory(names[0]).gt_verts)[:, nt == 0] + 1)
    assert rec[0].graph.num_edges == 2 * (5 * 5 + 6 * 4 + 5 * 4)  # 6x5 grid: horizontal + vertical + diagonal


def test_incomplete_or_missing_cache_and_bad_source_are_clear_errors(tmp_path):
    ds = wave_dataset(train=1)
    name = ds.names("train")[0]
    _write_cache(tmp_path, name, ds.trajectory(name).gt_verts, 7)
    with pytest.raises(DatasetError, match="incomplete"):
        load_mesh_cache(tmp_path / f"{name}.npz", 16)
    with pytest.raises(DatasetError, match="missing"):
        load_mesh_cache(tmp_path / "nope.npz", 16)
    # a NaN in a finished frame (issue 11.7: stage 3 used to train on it without a word)
    bad = np.array(ds.trajectory(name).gt_verts, dtype=np.float32)
    _write_cache(tmp_path, name, bad, 16)
    z = dict(np.load(tmp_path / f"{name}.npz"))
    z["verts"][5, 3] = np.nan
    atomic_savez(tmp_path / f"{name}.npz", **z)
    with pytest.raises(ClodsError, match="non-finite vertices in its finished frames"):
        load_trajectories(ds, [name], "recovered", str(tmp_path))
    with pytest.raises(ClodsError, match="data.source"):
        parse_source("gt:x")
    with pytest.raises(ClodsError, match="mesh_cache_dir"):
        load_trajectories(ds, [name], "recovered", None)
    assert exponential_lr_factor(0, 1e-4, 1e-6, 100) == pytest.approx(1.0)
    assert exponential_lr_factor(10**6, 1e-4, 1e-6, 100) == pytest.approx(1e-2)


class _DM(DynamicsDataModule):
    def __init__(self, dataset, **kw):
        super().__init__("in-memory", source="gt", **kw)
        self._ds = dataset

    def _read_dataset(self):
        return self._ds


def _module(**kw):
    args = dict(
        latent=16,
        blocks=2,
        rollout_length=3,
        noise_std=0.0,
        normalizer_steps=3,
        lr=3e-3,
        lr_min=1e-5,
        lr_decay_steps=1e4,
    )
    args.update(kw)
    return DynamicsModule(**args)


def _trainer(**kw) -> L.Trainer:
    """A quiet CPU trainer (no logger, checkpoints, progress bar or summary)."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _val_loss(module, batch):
    module.eval()
    with torch.no_grad():
        return float(module.rollout_loss(batch, noise=False, accumulate=False)[1].sum())


def test_short_training_lowers_rollout_loss_and_checkpoint_reloads(tmp_path):
    L.seed_everything(0)
    ds = wave_dataset(train=3, frames=12)
    dm = _DM(ds, rollout_length=3, windows_per_epoch=40, batch_size=2, val_split="test_viewed")
    module = _module()
    trainer = _trainer(max_epochs=6, default_root_dir=tmp_path)
    dm.setup()
    batch = collate_windows([FixedWindows(dm.train, 5)[i] for i in range(len(FixedWindows(dm.train, 5)))])
    # statistics come from the first normalizer_steps steps only
    trainer.fit(module, datamodule=dm)
    acc = module.model.node_normalizer.num_accumulations.item()
    assert acc == 3 and int(module.train_steps) == 120
    after = _val_loss(module, batch)
    fresh = _module()
    fresh.model.load_state_dict({k: v for k, v in module.model.state_dict().items() if "normalizer" in k}, strict=False)
    before = _val_loss(fresh, batch)  # same normalizers, untrained weights
    assert after < 0.5 * before, (before, after)
    assert "val/rollout_rmse_normal" in trainer.callback_metrics

    ckpt = tmp_path / "dyn.ckpt"
    trainer.save_checkpoint(ckpt)
    model = load_dynamics_model(ckpt)
    assert torch.equal(model.output_normalizer.acc_sum, module.model.output_normalizer.acc_sum)
    t = dm.train[0]
    args = (t.verts[0], t.verts[1], 8, t.mesh_pos, t.node_type, t.graph)
    with torch.no_grad():
        assert torch.equal(
            model.rollout(*args, prescribed=t.verts[2:10]), module.model.eval().rollout(*args, prescribed=t.verts[2:10])
        )
    with pytest.raises(DatasetError, match="missing"):
        load_dynamics_model(tmp_path / "none.ckpt")


def test_data_rollout_length_follows_the_model_unless_set():
    """One setting: with data.rollout_length unset, windows hold the attached model's rollout_length + 2 frames."""
    ds = wave_dataset(train=1, frames=12)
    dm = _DM(ds, windows_per_epoch=2, batch_size=1)
    with pytest.raises(ClodsError, match="data.rollout_length"):
        _ = dm.window  # no model attached: nothing to follow
    trainer = _trainer(max_steps=1)
    trainer.fit(_module(rollout_length=4, normalizer_steps=0), datamodule=dm)
    assert dm.window == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["verts"].shape[0] == 6
    assert _DM(ds, rollout_length=7).window == 9  # set explicitly: longer windows than the model rolls out


def test_noise_moves_step1_target_and_window_length_is_checked():
    ds = wave_dataset(train=1, frames=8)
    dm = _DM(ds, rollout_length=2, windows_per_epoch=2, batch_size=1)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["verts"].shape == (4, 30, 3)
    with pytest.raises(ClodsError, match="rollout_length"):
        _module(rollout_length=5).rollout_loss(batch, noise=False, accumulate=False)
    m = _module(rollout_length=2, noise_std=0.01)
    torch.manual_seed(0)
    l1 = m.rollout_loss(batch, noise=True, accumulate=False)[1]
    l0 = m.rollout_loss(batch, noise=False, accumulate=False)[1]
    assert not torch.allclose(l0, l1)


@pytest.mark.parametrize("name", ["flag_tiny", "flag_small", "flag_paper"])
def test_experiment_stage3_section_runs_under_plain_lightning_cli(name, tmp_path):
    """Stage 3 is a standalone LightningModule/DataModule pair: an experiment's stage3 section (less the
    orchestrator's `sources` and `seeds`) is a valid plain LightningCLI config."""
    from pathlib import Path

    import yaml
    from lightning.pytorch.cli import LightningCLI

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml").read_text())
    section = {k: v for k, v in section["stage3"].items() if k not in ("sources", "seeds")}
    section.setdefault("trainer", {}).update(accelerator="cpu", devices=1)  # the paper preset asks for GPUs
    cfg = tmp_path / "stage3.yaml"
    cfg.write_text(yaml.safe_dump(section))
    cli = LightningCLI(
        DynamicsModule,
        DynamicsDataModule,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            str(cfg),
            "--data.dataset_dir",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
        ],
    )
    assert cli.datamodule.rollout_length is None  # one setting: the windows follow model.rollout_length
    assert cli.model.model.message_passing == cli.model.hparams.message_passing in ("native", "dgl")


def test_normalizer_steps_leave_weights_unchanged_and_return_a_loss(tmp_path):
    """The first normalizer_steps only accumulate statistics: weights stay put, yet each step returns a loss
    (DDP cannot skip a step: `training_step` returning None fails under SLURM/DDP)."""
    L.seed_everything(0)
    dm = _DM(wave_dataset(train=2, frames=10), rollout_length=3, windows_per_epoch=4, batch_size=2)
    module = _module(normalizer_steps=4)
    w0 = {k: v.clone() for k, v in module.model.state_dict().items() if "normalizer" not in k}
    dm.setup()
    loss = module.training_step(next(iter(dm.train_dataloader())), 0)
    assert loss.requires_grad and float(loss) == 0.0
    trainer = _trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)  # 2 batches: both within the 4 normalizer steps
    assert module.model.node_normalizer.num_accumulations.item() == 3
    w1 = {k: v for k, v in module.model.state_dict().items() if "normalizer" not in k}
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # the optimizer never stepped (issue 11: Adam's state used to count these zero-gradient steps)
    assert trainer.optimizers[0].state == {} or all(int(st["step"]) == 0 for st in trainer.optimizers[0].state.values())
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 0  # nor did the learning-rate schedule


def _dist(v):
    """(T, V, V) distances between the vertices of each frame of ``v`` (T, V, 3), exactly (no matmul form)."""
    return (v[:, :, None] - v[:, None, :]).norm(dim=-1)


def test_yaw_augment_turns_each_window_about_z_and_keeps_its_shape():
    """Augmented windows are rigid turns about the up axis: z, edge lengths and speeds stay, x/y change."""
    from clods_pl.dynamics.augment import rotate_yaw

    v = torch.randn(5, 7, 3, dtype=torch.float64)
    r = rotate_yaw(v, 0.7)
    assert torch.allclose(r[..., 2], v[..., 2])
    assert torch.allclose(torch.cdist(r[0], r[0]), torch.cdist(v[0], v[0]))
    assert torch.allclose(rotate_yaw(r, -0.7), v)
    assert torch.allclose(
        rotate_yaw(torch.tensor([[1.0, 0.0, 0.0]]), torch.pi / 2), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-7
    )

    ds = wave_dataset(train=2, frames=8)
    plain = _DM(ds, rollout_length=2, windows_per_epoch=8, batch_size=1)
    turned = _DM(ds, rollout_length=2, windows_per_epoch=8, batch_size=1, yaw_augment=True)
    plain.setup(), turned.setup()
    torch.manual_seed(0)
    a = [w for _, w in (plain.train_dataloader().dataset[i] for i in range(8))]
    torch.manual_seed(0)
    items = [turned.train_dataloader().dataset[i] for i in range(8)]
    for t, w in items:
        # the window is some window of its trajectory, turned: match z and the vertices' pairwise distances
        assert any(
            torch.allclose(ref[..., 2], w[..., 2]) and torch.allclose(_dist(ref), _dist(w), atol=1e-5)
            for ref in (t.verts[s : s + 4] for s in range(t.verts.shape[0] - 3))
        ), "an augmented window must keep every height and distance of a window of its trajectory"
    assert not all(torch.allclose(x, w) for x, (_, w) in zip(a, items))


def test_random_triples_are_consecutive_frames_of_each_window():
    from clods_pl.stages.dynamics import random_triples

    W, counts = 6, [3, 5, 2]
    frame = torch.arange(W, dtype=torch.float32)[:, None, None].expand(W, sum(counts), 3).clone()
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        tri = random_triples(frame, counts)
        assert tri.shape == (3, sum(counts), 3)
        assert torch.equal(tri[1] - tri[0], torch.ones_like(tri[0])) and torch.equal(tri[2] - tri[1], tri[1] - tri[0])
        lo = 0
        for c in counts:  # one start per window, shared by its vertices
            starts = tri[0, lo : lo + c, 0]
            assert torch.all(starts == starts[0])
            seen.add(int(starts[0]))
            lo += c
    assert seen == set(range(W - 2))  # every (t-1, t, t+1) of the window is drawn


def test_one_step_warmup_trains_one_step_then_the_rollout(tmp_path):
    """After the normalizer steps, ``one_step_warmup`` steps train on one (t-1, t, t+1) triple per window (a
    one-step rollout), then every step rolls out ``rollout_length`` steps over the whole window."""
    with pytest.raises(ClodsError, match="one_step_warmup"):
        _module(one_step_warmup=-1)
    L.seed_everything(0)
    dm = _DM(wave_dataset(train=3, frames=12), rollout_length=3, windows_per_epoch=40, batch_size=2)
    module = _module(normalizer_steps=3, one_step_warmup=50)
    calls = []
    rollout_loss = module.rollout_loss

    def spy(batch, noise, accumulate, steps=None):
        calls.append((batch["verts"].shape[0], steps))
        return rollout_loss(batch, noise, accumulate, steps)

    module.rollout_loss = spy
    w0 = module.model.decoder[-1].weight.detach().clone()
    trainer = _trainer(max_steps=55, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert calls[:3] == [(5, None)] * 3  # normalizer steps see whole windows
    assert calls[3:53] == [(3, 1)] * 50  # the warm-up: one triple, one step
    assert calls[53:] and set(calls[53:]) == {(5, None)}  # then the rollout over the window
    assert not torch.equal(w0, module.model.decoder[-1].weight)  # the warm-up trained the weights
