"""Stage 2 recovery: losses and gradients, accuracy on a known sequence, pinned nodes, GT isolation, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_recovery_toy import FLAG_W, ToyTrajectory

from clods_pl.data.splits import training_views
from clods_pl.errors import ClodsError, Interrupted, ManifestError
from clods_pl.geometry import unique_edges
from clods_pl.stages.mesh_cache import MeshCache, MeshCacheError
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError
from clods_pl.stages.recovery_jobs import open_job, parse_frames
from clods_pl.stages.recovery_loop import recover_batch, recover_trajectory
from clods_pl.stages.recovery_losses import (
    compose_verts,
    edge_strain_loss,
    frame_loss,
    frame_losses,
    rest_edge_lengths,
    smoothing_operator,
)
from clods_pl.stages.recovery_metrics import flag_size

TESTS_DIR = Path(__file__).resolve().parent
FAST = dict(iterations=40, lr=3e-3, gamma=1.0, min_iterations=40)  # fixed step count: cheap and deterministic


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny renders are much faster on one thread (and deterministic); restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----- (f) edge loss ----------------------------------------------------------------------------------------
def test_edge_loss_zero_at_rest_and_gradient_matches_finite_differences() -> None:
    traj = ToyTrajectory(num_frames=2)
    edges = unique_edges(traj.faces)
    verts0 = traj.verts0.double()
    rest = rest_edge_lengths(verts0, edges)
    assert float(edge_strain_loss(verts0, edges, rest)) == 0.0
    # rigid motions keep it (numerically) zero
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert float(edge_strain_loss(verts0 @ rot.T + 0.3, edges, rest)) < 1e-20
    x = (verts0 + 0.05 * torch.randn_like(verts0, generator=None)).requires_grad_(True)
    assert float(edge_strain_loss(x.detach(), edges, rest)) > 0
    torch.autograd.gradcheck(lambda v: edge_strain_loss(v, edges, rest), (x,), eps=1e-6, atol=1e-6)
    # batched form equals per-item
    xb = torch.stack([x.detach(), verts0])
    assert torch.allclose(
        edge_strain_loss(xb, edges, rest),
        torch.stack([edge_strain_loss(x.detach(), edges, rest), torch.zeros((), dtype=torch.float64)]),
    )


def test_frame_losses_of_a_batch_are_the_per_trajectory_losses() -> None:
    """Stage 2's batched loss (any renderer; the SMGS renders the batch at once) equals frame_loss per trajectory."""
    traj = ToyTrajectory(num_frames=3, views=2, size=16)
    cfg = RecoveryConfig(gamma=0.5, alpha_weight=0.3)
    edges = unique_edges(traj.faces)
    renderer = type(traj.renderer)(traj.mesh_pos).double()
    cams = traj.cameras.to(dtype=torch.float64)
    bg = torch.ones(3, dtype=torch.float64)
    verts = torch.stack([traj.verts0.double(), traj.verts0.double() + 0.02 * torch.randn(traj.verts0.shape).double()])
    rest = rest_edge_lengths(traj.verts0.double(), edges).expand(2, -1)
    targets = [traj.image_tensor(1).double(), traj.image_tensor(2).double()]
    total, photo, edge = frame_losses(renderer, verts, [cams, cams], targets, bg, edges, rest, cfg)
    for b in range(2):
        one = frame_loss(renderer, verts[b], cams, targets[b], bg, edges, rest[b], cfg)
        assert torch.allclose(torch.stack([total[b], photo[b], edge[b]]), torch.stack(one), rtol=1e-12)
    assert edge[1] > 0 and total[0] != total[1]


# ----- (d) gradient reaches dx; pinned rows get none ---------------------------------------------------------
def test_loss_gradient_reaches_free_displacements_only() -> None:
    traj = ToyTrajectory(num_frames=2, views=2, size=16)
    cfg = RecoveryConfig(gamma=0.5)
    edges = unique_edges(traj.faces)
    rest = rest_edge_lengths(traj.verts0.double(), edges)
    pinned = torch.as_tensor(traj.node_type) == 3
    renderer = type(traj.renderer)(traj.mesh_pos).double()
    cams = traj.cameras.to(dtype=torch.float64)
    target = traj.image_tensor(1).double()
    bg = torch.ones(3, dtype=torch.float64)
    x = traj.verts0.double()
    dx = (0.01 * torch.randn(x.shape, dtype=torch.float64)).requires_grad_(True)

    def f(d: torch.Tensor) -> torch.Tensor:
        return frame_loss(renderer, compose_verts(x, d, pinned, x), cams, target, bg, edges, rest, cfg)[0]

    f(dx).backward()
    g = dx.grad
    assert torch.all(g[pinned] == 0) and float(g[~pinned].abs().sum()) > 0
    # central finite differences on a few free coordinates
    free = torch.nonzero(~pinned).flatten()[:3]
    for i in free.tolist():
        for k in range(3):
            e = torch.zeros_like(dx)
            e[i, k] = 1e-6
            fd = (f(dx.detach() + e) - f(dx.detach() - e)) / 2e-6
            assert abs(float(fd) - float(g[i, k])) < 1e-5 + 1e-3 * abs(float(fd))


# ----- (d) accuracy and (e) pinned vertices --------------------------------------------------------------------
def test_recovery_accuracy_on_known_sequence(tmp_path) -> None:
    traj = ToyTrajectory(num_frames=6, views=4, size=32)
    cfg = RecoveryConfig(iterations=100, lr=2e-3, gamma=1.0)
    cache = recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", cfg)
    assert cache.complete and cache.frames_done == 6
    gt = traj.load_gt_verts()
    rel = np.sqrt(((cache.verts - gt) ** 2).sum(-1).mean(-1)) / flag_size(traj.mesh_pos)
    assert flag_size(traj.mesh_pos) == pytest.approx(FLAG_W)
    assert rel.max() < 0.02, rel
    assert rel[-1] <= 3 * max(rel[1], 1e-4)
    np.testing.assert_allclose(cache.gt_metrics["rmse"], rel * FLAG_W, rtol=1e-4, atol=1e-7)
    # the unconstrained start (no optimisation) is much worse: the optimiser did the work
    still = np.sqrt(((gt[0][None] - gt[1:]) ** 2).sum(-1).mean(-1)) / FLAG_W
    assert rel[1:].mean() < 0.2 * still.mean()
    assert (cache.losses[1:] > 0).all() and (cache.iterations[1:] > 0).all()


def test_smoothing_operator_is_the_inverse_of_identity_plus_laplacian() -> None:
    """(I + l L)^-1 of the mesh graph: symmetric, rows summing to 1 (a uniform step moves the mesh rigidly),
    identity at l = 0, and it damps a vertex's lone step onto its neighbours."""
    traj = ToyTrajectory(num_frames=2)
    edges = unique_edges(traj.faces)
    v = traj.verts0.shape[0]
    m = smoothing_operator(edges, v, 4.0, torch.float64)
    lap = torch.zeros(v, v, dtype=torch.float64)
    for i, j in edges.tolist():
        lap[i, j] = lap[j, i] = -1.0
    lap -= torch.diag(lap.sum(1))
    assert torch.allclose((torch.eye(v, dtype=torch.float64) + 4.0 * lap) @ m, torch.eye(v, dtype=torch.float64))
    assert torch.allclose(m, m.T) and torch.allclose(m.sum(1), torch.ones(v, dtype=torch.float64))
    assert torch.equal(smoothing_operator(edges, v, 0.0, torch.float64), torch.eye(v, dtype=torch.float64))
    i, j = edges[0].tolist()
    assert 0 < m[i, i] < 0.5 and m[j, i] > 0  # a lone step is spread over the neighbourhood


def test_smoothing_recovers_the_known_sequence_and_changes_the_cache_settings(tmp_path) -> None:
    """With the large-steps preconditioner the toy flag is recovered as accurately; smoothing 0 leaves the settings
    (and so existing caches) as they were, another value is a new setting."""
    from clods_pl.stages.recovery_config import recovery_settings

    traj = ToyTrajectory(num_frames=4, views=4, size=32)
    cfg = RecoveryConfig(iterations=100, lr=4e-3, gamma=1.0, smoothing=2.0)
    cache = recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", cfg)
    rel = np.sqrt(((cache.verts - traj.load_gt_verts()) ** 2).sum(-1).mean(-1)) / FLAG_W
    assert rel.max() < 0.02, rel
    stiff = RecoveryConfig(iterations=20, lr=4e-3, gamma=1.0, smoothing=1e5, init="previous")
    moved = recover_trajectory("toy", traj, traj.renderer, tmp_path / "stiff.npz", "h", stiff, frames=":2").verts
    step = np.asarray(moved[1] - moved[0])[np.asarray(traj.node_type) != 3]  # free vertices: one rigid shift
    assert np.abs(step.mean(0)).max() > 1e-3 and step.std(0).max() < 1e-2 * np.abs(step.mean(0)).max()
    assert "model.smoothing" not in recovery_settings(RecoveryConfig(), [1])
    assert recovery_settings(cfg, [1])["model.smoothing"] == 2.0
    with pytest.raises(RecoveryConfigError, match="model.smoothing must be a number >= 0"):
        RecoveryConfig(smoothing=-1.0)


def test_a_frame_no_step_improves_keeps_its_start_and_says_so(tmp_path, capsys) -> None:
    """A start that is already the answer (the toy's frame 0 shown again as frames 1 and 2, 'previous' starts) and
    steps far too long: every step is worse, each frame keeps its start exactly and one line names the settings."""
    traj = ToyTrajectory(num_frames=3, views=3, size=20)
    traj._gt[1] = traj._gt[2] = traj._gt[0]
    cfg = RecoveryConfig(iterations=12, lr=0.2, gamma=1.0, init="previous", min_iterations=12)
    cache = recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", cfg, say=print)
    assert np.array_equal(np.asarray(cache.verts[2]), np.asarray(cache.verts[0]))
    out = capsys.readouterr().out
    assert "toy frame 1: no optimiser step improved on the initial guess" in out and "stage2.model.smoothing" in out
    assert out.count("no optimiser step improved") == 1


@pytest.mark.parametrize("with_handle_pos", [False, True])
def test_pinned_vertices_follow_prescription(tmp_path, with_handle_pos) -> None:
    traj = ToyTrajectory(num_frames=4, views=3, size=20, with_handle_pos=with_handle_pos)
    pinned = traj.node_type == 3
    if with_handle_pos:  # move the pole: pinned nodes must follow it exactly
        traj.handle_pos = traj.handle_pos + torch.tensor([0.0, 0.01, 0.0]) * torch.arange(4.0)[:, None, None]
    cache = recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", RecoveryConfig(**FAST))
    for t in range(4):
        expected = traj.handle_pos[t] if with_handle_pos else traj.verts0[pinned]
        np.testing.assert_array_equal(cache.verts[t][pinned.numpy()], expected.numpy())
    assert not np.allclose(cache.verts[-1][~pinned.numpy()], traj.verts0[~pinned].numpy())


# ----- (c) ground truth never enters the optimisation ---------------------------------------------------------
@pytest.mark.parametrize("dynamics", [False, True])
def test_changing_gt_leaves_recovered_meshes_bit_identical(tmp_path, dynamics) -> None:
    """Ground truth is for evaluation only, also when a stage-3 model starts each frame and adds its prior (the
    refine loop's stage 2)."""
    extra = {}
    if dynamics:
        ckpt = _still_model_checkpoint(tmp_path / "m.ckpt", (0.0, 0.0, -0.01))
        extra = dict(init="dynamics", dynamics_checkpoint=str(ckpt), prior_weight=1e-3)
    runs = {}
    for offset in (0.0, 0.05):
        traj = ToyTrajectory(num_frames=4, views=3, size=20, gt_offset=offset)
        runs[offset] = recover_trajectory(
            "toy", traj, traj.renderer, tmp_path / f"{offset}.npz", "h", RecoveryConfig(**FAST, **extra)
        )
    a, b = runs[0.0], runs[0.05]
    assert np.array_equal(a.verts, b.verts) and np.array_equal(a.losses, b.losses)
    assert np.array_equal(a.edge_losses, b.edge_losses)
    assert not np.allclose(a.gt_metrics["rmse"], b.gt_metrics["rmse"])  # the evaluation did see the change
    no_gt = recover_trajectory(
        "toy",
        ToyTrajectory(num_frames=4, views=3, size=20),
        traj.renderer,
        tmp_path / "nogt.npz",
        "h",
        RecoveryConfig(**FAST, **extra),
        evaluate_gt=False,
    )
    assert np.array_equal(no_gt.verts, a.verts) and not no_gt.gt_metrics


# ----- batching, frame windows, stale stage 1 ---------------------------------------------------------------------
def test_batched_trajectories_equal_separate_runs_and_frame_windows(tmp_path) -> None:
    cfg = RecoveryConfig(iterations=30, lr=3e-3, plateau_patience=5, min_iterations=3)
    trajs = {
        "a": ToyTrajectory(num_frames=4, views=3, size=20),
        "b": ToyTrajectory(num_frames=4, views=3, size=20, with_handle_pos=True),
    }
    trajs["b"]._gt = trajs["b"]._gt * torch.tensor([1.0, -1.0, 1.0])  # a different motion, same rest shape
    trajs["b"]._images.clear()
    renderer = trajs["a"].renderer
    jobs = [open_job(n, t, tmp_path / "batch" / f"{n}.npz", "h", config=cfg) for n, t in trajs.items()]
    # resume mismatch inside a batch: "a" is ahead of "b"
    recover_trajectory("a", trajs["a"], renderer, tmp_path / "batch" / "a.npz", "h", cfg, frames="1:2")
    jobs = [open_job(n, t, tmp_path / "batch" / f"{n}.npz", "h", config=cfg) for n, t in trajs.items()]
    assert [j.next_frame for j in jobs] == [2, 1]
    recover_batch(jobs, renderer, cfg)
    for n, t in trajs.items():
        alone = recover_trajectory(n, t, renderer, tmp_path / "alone" / f"{n}.npz", "h", cfg)
        batched = MeshCache.load(tmp_path / "batch" / f"{n}.npz")
        assert batched.complete
        np.testing.assert_array_equal(batched.verts, alone.verts)
        np.testing.assert_array_equal(batched.losses, alone.losses)
    # frame windows: needs earlier frames; a done window is a no-op
    path = tmp_path / "win.npz"
    c = recover_trajectory("a", trajs["a"], renderer, path, "h", cfg, frames=":2")
    assert c.frames_done == 2
    with pytest.raises(RecoveryConfigError, match="needs frames 0..2 recovered first"):
        recover_trajectory("a", trajs["a"], renderer, path, "h", cfg, frames="3:4")
    assert recover_trajectory("a", trajs["a"], renderer, path, "h", cfg, frames="2:4").complete
    np.testing.assert_array_equal(MeshCache.load(path).verts, MeshCache.load(tmp_path / "alone" / "a.npz").verts)
    # (b) a cache from another stage-1 checkpoint is refused; overwrite rebuilds
    with pytest.raises(ManifestError, match="--stage2.model.overwrite true"):
        recover_trajectory("a", trajs["a"], renderer, path, "other", cfg)
    rebuilt = recover_trajectory("a", trajs["a"], renderer, path, "other", cfg, frames=":2", overwrite=True)
    assert rebuilt.frames_done == 2 and MeshCache.load(path).stage1_hash == "other"


def test_setting_errors_are_clear() -> None:
    assert parse_frames(None, 8) == (None, 8) and parse_frames("2:5", 8) == (2, 5) and parse_frames("3:", 8) == (3, 8)
    for bad in ("5", "a:b", "4:2", "0:9", "1:2:3"):
        with pytest.raises(RecoveryConfigError, match="frames="):
            parse_frames(bad, 8)
    assert training_views(4, [1, 3], "stage2.data.holdout_views") == [0, 2]
    with pytest.raises(ClodsError, match=r"stage2.data.holdout_views \[4\] out of range for 4 views"):
        training_views(4, [4], "stage2.data.holdout_views")
    with pytest.raises(ClodsError, match="stage2.data.holdout_views holds out all 2 views"):
        training_views(2, [0, 1], "stage2.data.holdout_views")
    with pytest.raises(RecoveryConfigError, match="model.lr"):
        RecoveryConfig(lr=0.0)
    assert issubclass(MeshCacheError, ClodsError)


def test_sigterm_stops_after_a_saved_step_and_the_rerun_resumes(tmp_path) -> None:
    """``should_stop`` (stage 2 asks Lightning whether a SIGTERM arrived) ends the frame loop after the step it was
    working on is saved; rerunning resumes from there to the same meshes as a run never stopped."""
    from types import SimpleNamespace

    from clods_pl.stages.recovery import RecoveryModule

    cfg = RecoveryConfig(**FAST)
    traj = ToyTrajectory(num_frames=4, views=3, size=20)
    path = tmp_path / "stopped.npz"
    job = open_job("toy", traj, path, "h", config=cfg)
    with pytest.raises(Interrupted, match="after 1 of 3 trajectory-frames.*rerun the same command to resume"):
        recover_batch([job], traj.renderer, cfg, should_stop=lambda: True)
    assert MeshCache.load(path).frames_done == 2  # frame 0 (given) and frame 1
    recover_batch([open_job("toy", traj, path, "h", config=cfg)], traj.renderer, cfg, should_stop=lambda: False)
    clean = recover_trajectory("toy", traj, traj.renderer, tmp_path / "clean.npz", "h", cfg)
    np.testing.assert_array_equal(MeshCache.load(path).verts, clean.verts)
    # the module reads Lightning's flag (Lightning's predict loop itself never acts on it)
    module = RecoveryModule.__new__(RecoveryModule)
    module._trainer = SimpleNamespace(received_sigterm=True)
    assert module._sigterm_received()
    module._trainer = None
    assert not module._sigterm_received()


# ----- (a) resume after SIGKILL in a real subprocess ----------------------------------------------------------------
_SCRIPT = """
import sys, torch
torch.set_num_threads(1); torch.manual_seed(0); torch.use_deterministic_algorithms(True)
from test_recovery_toy import ToyTrajectory
from clods_pl.stages.recovery_config import RecoveryConfig
from clods_pl.stages.recovery_loop import recover_trajectory
traj = ToyTrajectory(num_frames=8, views=3, size=20)
recover_trajectory("toy", traj, traj.renderer, sys.argv[1], "h",
                   RecoveryConfig(iterations=40, lr=3e-3, min_iterations=40))
"""


def _start(path: Path) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _frames_done(path: Path) -> int:
    try:
        return MeshCache.load(path).frames_done
    except (FileNotFoundError, MeshCacheError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path) -> None:
    killed, clean = tmp_path / "killed.npz", tmp_path / "clean.npz"
    proc, reference = _start(killed), _start(clean)  # the uninterrupted reference runs alongside
    deadline = time.time() + 120
    while _frames_done(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 3 <= _frames_done(killed) < 8
    resumed = _start(killed)
    for p in (resumed, reference):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    a, b = MeshCache.load(killed), MeshCache.load(clean)
    assert a.complete and b.complete
    np.testing.assert_allclose(a.verts, b.verts, rtol=0, atol=1e-7)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(a.iterations, b.iterations)


# ----- init: dynamics and the dynamics prior (issue 15) ----------------------------------------------------------
def _still_model_checkpoint(path: Path, accel: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """A stage-3 checkpoint whose model predicts the acceleration ``accel`` everywhere (its normalisers are empty:
    unit scale), so its one-step prediction is constant velocity plus ``accel``."""
    import lightning as L

    from clods_pl.stages.dynamics import DynamicsModule

    module = DynamicsModule(latent=8, blocks=1, rollout_length=2, normalizer_steps=0)
    last = module.model.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(accel))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_dynamics_init_is_the_models_one_step_prediction(tmp_path) -> None:
    """``init: dynamics`` starts frame t at the model's prediction from the recovered frames t-2, t-1: constant
    velocity plus the model's acceleration on free vertices, the prescribed positions on HANDLE rows."""
    from clods_pl.stages.recovery_jobs import DynamicsPrior

    accel = (0.01, -0.02, 0.03)
    ckpt = _still_model_checkpoint(tmp_path / "accel.ckpt", accel)
    traj = ToyTrajectory(num_frames=5, views=3, size=24)
    recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", RecoveryConfig(**FAST), frames="0:3")
    job = open_job("toy", traj, tmp_path / "toy.npz", "h", [], None, False, False, RecoveryConfig(**FAST))
    assert job.next_frame == 3
    prior = DynamicsPrior(str(ckpt))
    guess = job.initial_guess(3, "dynamics", prior).numpy()
    x1, x2 = job.cache.verts[1], job.cache.verts[2]
    free = ~job.pinned.numpy()
    np.testing.assert_allclose(guess[free], (2 * x2 - x1 + np.asarray(accel))[free], atol=1e-6)
    np.testing.assert_allclose(guess[~free], job.pinned_positions(3).numpy()[~free])
    np.testing.assert_allclose(job.initial_guess(3, "velocity").numpy(), 2 * x2 - x1, atol=1e-6)
    np.testing.assert_allclose(job.initial_guess(3, "previous").numpy(), x2)
    np.testing.assert_allclose(job.initial_guess(1, "dynamics", prior).numpy(), job.cache.verts[0])  # one frame known
    assert prior.scale.tolist() == [1.0, 1.0, 1.0]


def test_a_strong_prior_holds_the_frame_at_the_prediction(tmp_path) -> None:
    """prior_weight scales (x - x_pred)^2 in units of the model's acceleration scale: very large, the recovered frame
    is the prediction (constant velocity from the recovered frames); zero, the images decide."""
    ckpt = str(_still_model_checkpoint(tmp_path / "still.ckpt"))
    traj = ToyTrajectory(num_frames=4, views=3, size=24)
    strong = RecoveryConfig(init="previous", dynamics_checkpoint=ckpt, prior_weight=1e6, **FAST)
    verts = recover_trajectory("toy", traj, traj.renderer, tmp_path / "strong.npz", "h", strong).verts
    free = ~(torch.as_tensor(traj.node_type) != 0).numpy()
    predicted = 2 * verts[2] - verts[1]  # frame 3 from the recovered frames 1 and 2
    assert np.abs(verts[3][free] - predicted[free]).max() < 2e-3
    off = RecoveryConfig(init="previous", dynamics_checkpoint=ckpt, prior_weight=0.0, **FAST)
    free_run = recover_trajectory("toy", traj, traj.renderer, tmp_path / "off.npz", "h", off).verts
    assert np.abs(free_run[3][free] - (2 * free_run[2] - free_run[1])[free]).max() > 1e-2


def test_dynamics_settings_errors_are_clear(tmp_path) -> None:
    with pytest.raises(RecoveryConfigError, match="model.init='model'; choose one of previous, velocity, dynamics"):
        RecoveryConfig(init="model")
    with pytest.raises(RecoveryConfigError, match="need model.dynamics_checkpoint"):
        RecoveryConfig(init="dynamics")
    with pytest.raises(RecoveryConfigError, match="need model.dynamics_checkpoint"):
        RecoveryConfig(prior_weight=1.0)
    with pytest.raises(RecoveryConfigError, match="model.dynamics_checkpoint .*missing.ckpt does not exist"):
        RecoveryConfig(init="dynamics", dynamics_checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(RecoveryConfigError, match="model.prior_weight must be >= 0"):
        RecoveryConfig(prior_weight=-1.0)


def test_lr_final_decays_adams_step_size_exponentially(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lr_final``: the rate falls from lr to lr * lr_final over the iterations (1 = constant, the default)."""
    seen: list[float] = []

    class SpyAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    traj = ToyTrajectory(num_frames=2, views=2, size=16)
    cfg = RecoveryConfig(iterations=10, lr=4e-3, lr_final=0.01, min_iterations=10, plateau_patience=50)
    recover_trajectory("toy", traj, traj.renderer, tmp_path / "toy.npz", "h", cfg)
    assert len(seen) == 10 and seen[0] == pytest.approx(4e-3)
    assert seen == pytest.approx([4e-3 * 0.01 ** (i / 10) for i in range(10)])
    seen.clear()
    recover_trajectory(
        "toy", traj, traj.renderer, tmp_path / "c.npz", "h", RecoveryConfig(iterations=5, min_iterations=5)
    )
    assert seen == [RecoveryConfig().lr] * 5
    for bad in (0.0, 1.5):
        with pytest.raises(RecoveryConfigError, match="model.lr_final"):
            RecoveryConfig(lr_final=bad)


def test_extra_starts_keep_the_start_with_the_lowest_loss(tmp_path) -> None:
    """With ``extra_starts`` every frame is optimised from each start in one batch and keeps the lowest total loss:
    frame 2 (where ``previous`` and ``velocity`` differ) ends no higher than either start run alone."""
    traj = ToyTrajectory(num_frames=3, views=3, size=24)
    cfg = dict(FAST, plateau_patience=50)

    def run(name: str, **kw) -> MeshCache:
        return recover_trajectory(
            "toy", traj, traj.renderer, tmp_path / f"{name}.npz", "h", RecoveryConfig(**cfg, **kw)
        )

    def loss(cache: MeshCache, t: int) -> float:
        return float(cache.losses[t] + cfg["gamma"] * cache.edge_losses[t])

    alone = {init: run(init, init=init) for init in ("velocity", "previous")}
    assert abs(loss(alone["velocity"], 2) - loss(alone["previous"], 2)) > 1e-6  # the starts do lead elsewhere
    for init, extra in (("velocity", "previous"), ("previous", "velocity")):  # in one order the extra start wins
        both = run(f"{init}+{extra}", init=init, extra_starts=(extra,))
        assert loss(both, 2) <= min(loss(c, 2) for c in alone.values()) * (1 + 1e-5), (init, extra)
    with pytest.raises(RecoveryConfigError, match="model.extra_starts=.*'model' is not a start"):
        RecoveryConfig(init="velocity", extra_starts=("model",))
    assert RecoveryConfig(init="previous", extra_starts=["previous", "velocity", "velocity"]).extra_starts == (
        "velocity",
    )
    with pytest.raises(RecoveryConfigError, match="need model.dynamics_checkpoint"):
        RecoveryConfig(extra_starts=("dynamics",))
