"""Scaling-law fits: Chinchilla and MAP-Neo's NEO law, from (params N, tokens D, loss L) points.

    Chinchilla (Hoffmann et al. 2022, eq. 2):   L(N, D) = E + A / N^α + B / D^β
    NEO (MAP-Neo paper, seed 001):              L(N, D) = E + A / N^α + B / D^β − d · log D

Fitted as Chinchilla's Approach 3: parameters in log space (A = e^a, B = e^b, E = e^e), the Huber loss
(δ = 1e-3) between predicted and observed log L, minimised with L-BFGS from a grid of starting points,
the best optimum kept. Held-out points (by default the ones with the most compute 6·N·D, i.e. an
extrapolation) are not fitted; their relative prediction error is reported for both laws.

MAP-Neo's own (N, D, loss) points and fitted NEO-law constants were not found in any source this project could
read (#21: the paper's text is not available here; the released m-a-p/neo_scalinglaw_{250M,460M,980M}
repositories hold checkpoints, not loss tables), so no test checks that a fit recovers the paper's constants; the
CPU sweep (tests/services/trainer/test_scaling.py) checks the pipeline.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Approach 3
LAWS = ("chinchilla", "neo")
# Starting points: for fixed exponents (α, β) both laws are linear in (E, A, B[, d]), so a grid over
# α, β ∈ [0.05, 2] with non-negative least squares for the rest (variable projection) finds the basin;
# L-BFGS on the Huber objective then starts from the ``_STARTS`` best. (Chinchilla instead starts
# L-BFGS from 4,500 grid points; with a δ = 1e-3 Huber loss most of those stall far from the optimum.)
_EXPONENTS = np.round(np.arange(0.05, 2.0001, 0.05), 2)
_STARTS = 8


@dataclass(frozen=True)
class Point:
    params: float
    tokens: float
    loss: float
    run: str = ""


def _terms(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(A/N^α + B/D^β + E) and its softmax weights over the three terms (for the gradient)."""
    a, b, e, alpha, beta = x[:5]
    t = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, P)
    lse = np.logaddexp.reduce(t, axis=0)
    return lse, np.exp(t - lse)


def predict(law: str, x: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Loss predicted by ``law`` with fitted parameter vector ``x`` (a, b, e, α, β[, d])."""
    log_d = np.log(d)
    base = np.exp(_terms(x, np.log(n), log_d)[0])
    return base - x[5] * log_d if law == "neo" else base


def _objective(x: np.ndarray, law: str, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray):
    """Huber loss of log-space residuals and its gradient (analytic: L-BFGS needs few evaluations)."""
    lse, w = _terms(x, log_n, log_d)
    dlse = np.stack([w[0], w[1], w[2], -w[0] * log_n, -w[1] * log_d])  # ∂lse/∂(a, b, e, α, β), (5, P)
    if law == "neo":
        pred = np.exp(lse) - x[5] * log_d
        if np.any(pred <= 0):
            return 1e3, np.zeros_like(x)
        r = np.log(pred) - log_l
        dr = np.vstack([dlse * np.exp(lse) / pred, -log_d / pred])
    else:
        r, dr = lse - log_l, dlse
    abs_r = np.abs(r)
    small = abs_r <= HUBER_DELTA
    loss = np.sum(np.where(small, 0.5 * r**2, HUBER_DELTA * (abs_r - 0.5 * HUBER_DELTA)))
    dh = np.where(small, r, HUBER_DELTA * np.sign(r))
    return float(loss), dr @ dh


def _linear_starts(law: str, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> list[np.ndarray]:
    """Parameter vectors (a, b, e, α, β[, d]) from the best (α, β) grid points, linear terms by NNLS."""
    from scipy.optimize import nnls

    found = []
    for alpha, beta in itertools.product(_EXPONENTS, _EXPONENTS):
        cols = [np.ones_like(n), n**-alpha, d**-beta]
        if law == "neo":
            cols += [-np.log(d), np.log(d)]  # d = d⁺ − d⁻: NNLS with a free-sign coefficient
        X = np.stack(cols, axis=1)
        scale = np.linalg.norm(X, axis=0)
        coef, residual = nnls(X / scale, loss)
        coef = coef / scale
        found.append((residual, alpha, beta, coef))
    found.sort(key=lambda f: f[0])
    starts = []
    for _, alpha, beta, coef in found[:_STARTS]:
        x = [np.log(max(coef[1], 1e-12)), np.log(max(coef[2], 1e-12)), np.log(max(coef[0], 1e-12)), alpha, beta]
        starts.append(np.array(x + ([coef[3] - coef[4]] if law == "neo" else [])))
    return starts


def fit(law: str, points: Sequence[Point], extra_starts: Sequence[Sequence[float]] = ()) -> dict[str, Any]:
    """Best parameters of ``law`` over the starting points: {E, A, B, alpha, beta[, d], objective}.

    ``extra_starts``: more parameter vectors to start from (NEO starts from the Chinchilla optimum with
    d = 0 too, so the nested law never fits worse than Chinchilla).
    """
    from scipy.optimize import minimize

    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; choose one of {LAWS}")
    n = np.array([p.params for p in points], dtype=float)
    d = np.array([p.tokens for p in points], dtype=float)
    y = np.log(np.array([p.loss for p in points], dtype=float))
    args = (law, np.log(n), np.log(d), y)
    best = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in [*_linear_starts(law, n, d, np.exp(y)), *map(np.array, extra_starts)]:
            res = minimize(_objective, start, args=args, jac=True, method="L-BFGS-B")
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    if best is None:
        raise ValueError(f"{law}: no start of the grid converged on {len(points)} points")
    x = best.x
    out = {"E": float(np.exp(x[2])), "A": float(np.exp(x[0])), "B": float(np.exp(x[1])),
           "alpha": float(x[3]), "beta": float(x[4]), "objective": float(best.fun), "_x": x.tolist()}
    if law == "neo":
        out["d"] = float(x[5])
    return out


def _errors(law: str, params: dict[str, Any], points: Sequence[Point]) -> list[dict[str, Any]]:
    if not points:
        return []
    x = np.array(params["_x"])
    pred = predict(law, x, np.array([p.params for p in points]), np.array([p.tokens for p in points]))
    return [asdict(p) | {"predicted": float(q), "rel_error": float(abs(q - p.loss) / p.loss)}
            for p, q in zip(points, pred, strict=True)]


def split_holdout(points: Sequence[Point], holdout: int) -> tuple[list[Point], list[Point]]:
    """(fit points, held-out points): the ``holdout`` points with the largest compute 6·N·D are held out."""
    if holdout < 0 or len(points) - holdout < 6:
        raise ValueError(f"{len(points)} points with {holdout} held out leave fewer than 6 to fit 6 parameters")
    order = sorted(points, key=lambda p: p.params * p.tokens)
    return order[: len(order) - holdout], order[len(order) - holdout :]


def fit_report(points: Sequence[Point], holdout: int = 2, plot: Path | None = None) -> dict[str, Any]:
    """Fit both laws on all but the held-out points; errors on each set; optionally a PNG."""
    train, held = split_holdout(points, holdout)
    report: dict[str, Any] = {"points": len(points), "fit_points": len(train), "held_out": len(held)}
    fits = {}
    for law in LAWS:
        extra = [fits["chinchilla"]["_x"] + [0.0]] if law == "neo" else []
        params = fits[law] = fit(law, train, extra)
        fit_err, held_err = _errors(law, params, train), _errors(law, params, held)
        report[law] = {
            "params": {k: v for k, v in params.items() if not k.startswith("_")},
            "fit_mean_rel_error": float(np.mean([e["rel_error"] for e in fit_err])),
            "heldout_mean_rel_error": float(np.mean([e["rel_error"] for e in held_err])) if held_err else None,
            "heldout": held_err,
        }
    if plot is not None:
        plot_fits(points, held, fits, plot)
        report["plot"] = str(plot)
    return report


def plot_fits(points: Sequence[Point], held: Sequence[Point], fits: dict[str, dict[str, Any]], path: Path) -> Path:
    """Loss vs tokens, one colour per model size; both fitted laws as curves (solid Chinchilla, dashed NEO)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted({p.params for p in points})
    d_all = np.array([p.tokens for p in points])
    grid = np.geomspace(d_all.min() / 1.5, d_all.max() * 2, 100)
    held_ids = {id(p) for p in held}
    for i, n in enumerate(sizes):
        color = plt.cm.viridis(i / max(1, len(sizes) - 1))
        for p in (p for p in points if p.params == n):
            ax.scatter(p.tokens, p.loss, color=color, facecolors="none" if id(p) in held_ids else color, zorder=3)
        for law, style in (("chinchilla", "-"), ("neo", "--")):
            ax.plot(grid, predict(law, np.array(fits[law]["_x"]), np.full_like(grid, n), grid), style,
                    color=color, lw=1, label=f"N={n / 1e6:.2f}M" if law == "chinchilla" else None)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("validation loss")
    ax.set_title("scaling fits: Chinchilla (solid) vs NEO (dashed); hollow = held out")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def point_from_run(run_dir: Path, non_embedding: bool = False) -> Point:
    """(N, D, L) of a finished run: N from its export's neo.json, D and final validation loss from metrics."""
    from neo.config import ModelConfig
    from neo.schemas import NeoCheckpointInfo

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    export = Path((config.get("checkpoint") or {}).get("export_dir") or run_dir / "hf")
    info = NeoCheckpointInfo.read(export)
    if info is None:
        raise FileNotFoundError(f"{run_dir}: no finished export ({export / 'neo.json'} missing)")
    n = ModelConfig.from_dict(info.model).num_params(include_embedding=not non_embedding)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "val_loss" in r]
    if not evals:
        raise ValueError(f"{run_dir}: metrics.jsonl has no val_loss")
    return Point(params=float(n), tokens=float(evals[-1]["tokens"]), loss=float(evals[-1]["val_loss"]),
                 run=str(run_dir))


def load_points(paths: Sequence[Path], non_embedding: bool = False) -> list[Point]:
    """Points from run directories, or from JSON (list of {params, tokens, loss}) / CSV files."""
    points: list[Point] = []
    for path in map(Path, paths):
        if path.is_dir():
            points.append(point_from_run(path, non_embedding))
        elif path.suffix == ".json":
            points += [Point(**{k: row[k] for k in ("params", "tokens", "loss", "run") if k in row})
                       for row in json.loads(path.read_text())]
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                points += [Point(float(r["params"]), float(r["tokens"]), float(r["loss"]), r.get("run", ""))
                           for r in csv.DictReader(f)]
        else:
            raise FileNotFoundError(f"{path}: not a run directory or a .json/.csv points file")
    return points
