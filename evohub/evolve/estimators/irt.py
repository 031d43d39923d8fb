"""``irt`` and ``gmp-irt``: a candidate's full-set accuracy predicted from a few anchor items.

Item response theory as tinyBenchmarks (Polo et al., 2024, "tinyBenchmarks: evaluating LLMs with
fewer examples") and MERGE³ (Mencattini et al., ICML 2025, "MERGE³: Efficient Evolutionary Merging
on Consumer-grade GPUs") use it, with item parameters fitted on this job's own models:

- **The model**: multidimensional two-parameter logistic, P(y_ij = 1) = σ(θ_i·α_j − β_j), with
  d = ``dims`` (default 1: the calibration holds tens of models, too few to separate more
  factors; 2 is allowed). Fitted by joint maximum a posteriori (priors θ, α ~ N(0, I),
  β ~ N(0, 3²); L-BFGS from a seeded start) on the calibration matrix: the stage's reference
  models (the base and each source, merged with one weight 1 and the rest 0) and generation 0,
  each scored on the whole item pool, plus every candidate an audit scored in full before the
  generation being estimated (so the fit improves as the stage runs, the same on resume).
- **Anchors**, drawn afresh for each generation from the job seed: the items sorted by fitted
  difficulty β and cut into ``anchors`` equal strata, one random item from each, weight w_k = the
  stratum's share. tinyBenchmarks clusters items instead (k-means of their IRT embeddings, the
  item nearest each centre); with a calibration of a dozen similar models, as here, that picks
  unrepresentative items: on the demo world's 300-candidate runs its estimates ranked a
  generation's candidates at Spearman 0.46-0.63 against their full scores, stratified random
  anchors at 0.72-0.79 (bench/README.md, "Cheaper fitness"). Fresh anchors also keep CMA-ES from
  climbing one fixed set of 30 items for 30 generations.
- **A candidate** is scored on the anchors only (n items of the pool's N).
  - ``irt`` (p-IRT, tinyBenchmarks): θ̂ = argmax of the anchors' likelihood with a normal prior
    fitted to the calibration models' abilities (their mean and covariance), and  Ẑ = (n/N)·ȳ_anchors + (1 − n/N)·mean_{j ∉ anchors} σ(θ̂·α_j − β_j).
  - ``gmp-irt`` (MERGE³): the merge's ability is a combination of its sources' abilities,
    θ̂ = Σ_k λ_k θ_k over the reference models (λ by maximum likelihood on the anchors, from
    λ = 1/K; a 10⁻³ ridge keeps it finite when the anchors cannot tell the sources apart);
    mp-IRT = (n/N)·Σ w_k y_k + (1 − n/N)·mean_{j ∉ anchors} σ(θ̂·α_j − β_j); and
    gmp-IRT = δ·Σ w_k y_k + (1 − δ)·mp-IRT, δ = 0.5 as in MERGE³'s released code.

Generation 0 (the calibration) is scored in full: its estimates are its exact pool means. The
optimiser is told the estimates; the audits (every non-``full`` estimator has them) score the best
estimates in full, and only full scores pick the winner.
"""

from __future__ import annotations

import numpy as np

from evohub.errors import RunError
from evohub.evolve.estimators import (
    AUDIT_OPTIONS,
    ESTIMATORS,
    Calls,
    Estimate,
    Estimator,
    Option,
    PlanInputs,
    audit_calls,
)

#: the prior scale of the item difficulties β
B_SCALE = 3.0
#: gmp-IRT's blend of the weighted anchor mean and mp-IRT (MERGE³'s released code: 0.5)
DELTA = 0.5


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softplus(z):
    return np.logaddexp(0.0, z)


def fit_items(Y: np.ndarray, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(θ [models × d], α [items × d], β [items]) of a 2PL model fitted by joint MAP to the 0/1
    matrix ``Y`` (models × items)."""
    from scipy.optimize import minimize

    M, N = Y.shape
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([rng.normal(0, 0.1, M * dims), rng.normal(0, 0.1, N * dims) + 0.5, np.zeros(N)])

    def unpack(x):
        return x[: M * dims].reshape(M, dims), x[M * dims : (M + N) * dims].reshape(N, dims), x[(M + N) * dims :]

    def loss(x):
        theta, alpha, beta = unpack(x)
        z = theta @ alpha.T - beta
        g = _sigmoid(z) - Y
        f = (_softplus(z) - Y * z).sum() + 0.5 * ((theta**2).sum() + (alpha**2).sum() + (beta**2).sum() / B_SCALE**2)
        grad = np.concatenate(
            [(g @ alpha + theta).ravel(), (g.T @ theta + alpha).ravel(), -g.sum(0) + beta / B_SCALE**2]
        )
        return f, grad

    res = minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return unpack(res.x)


def anchors_of(beta: np.ndarray, k: int, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    """(anchor positions, their weights): the items sorted by fitted difficulty β and cut into
    ``k`` strata of (nearly) equal size, one item drawn at random from each, weighted by its
    stratum's share of the items."""
    strata = np.array_split(np.argsort(beta, kind="stable"), min(k, len(beta)))
    pos = [int(rng.choice(s)) for s in strata]
    w = np.asarray([len(s) for s in strata], dtype=float)
    return pos, w / w.sum()


def ability(y, alpha, beta, basis: np.ndarray | None = None, prior: tuple | None = None) -> np.ndarray:
    """θ̂ from anchor responses: MAP with a normal ``prior`` (mean, precision; default N(0, I)) —
    the calibration models' spread of abilities, so a candidate is not shrunk harder than they
    were — or, with a ``basis`` (rows: reference abilities), the maximum-likelihood combination
    Σ λ_k θ_k (a 10⁻³ ridge on λ − 1/K)."""
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=float)
    if basis is None:
        d = alpha.shape[1]
        mu, prec = prior if prior is not None else (np.zeros(d), np.eye(d))

        def loss(t):
            z, dt = alpha @ t - beta, t - mu
            return (_softplus(z) - y * z).sum() + 0.5 * dt @ prec @ dt, alpha.T @ (_sigmoid(z) - y) + prec @ dt

        return minimize(loss, np.array(mu, dtype=float), jac=True, method="L-BFGS-B").x
    K = len(basis)
    start = np.full(K, 1.0 / K)

    def loss_l(lam):
        t = lam @ basis
        z = alpha @ t - beta
        g = basis @ (alpha.T @ (_sigmoid(z) - y))
        return (_softplus(z) - y * z).sum() + 1e-3 * ((lam - start) ** 2).sum(), g + 2e-3 * (lam - start)

    return minimize(loss_l, start, jac=True, method="L-BFGS-B").x @ basis


def population(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of fitted abilities: the prior of a new model's θ (a 10⁻³ ridge)."""
    cov = np.atleast_2d(np.cov(theta.T)) if len(theta) > 1 else np.eye(theta.shape[1])
    return theta.mean(0), np.linalg.inv(cov + 1e-3 * np.eye(theta.shape[1]))


class IRT:
    """``irt`` (``merged=False``) and ``gmp-irt`` (``merged=True``)."""

    def __init__(self, options: dict, merged: bool):
        self.anchors, self.dims, self.merged = options["anchors"], options["dims"], merged
        self._fit: tuple | None = None  # (calibration keys, α, β, reference θ, the abilities' prior)

    def _calibrate(self, ctx, generation: int):
        rows = ctx.full_rows(generation)
        keys = tuple(sorted(rows))
        if self._fit is not None and self._fit[0] == keys:
            return self._fit
        Y = np.asarray([rows[k] for k in keys], dtype=float)
        if not np.isin(Y, (0.0, 1.0)).all():
            raise RunError(f"stage {ctx.stage}: the irt estimators need right/wrong item scores (0 or 1)")
        theta, alpha, beta = fit_items(Y, self.dims, ctx.seed)
        refs = np.asarray([theta[n] for n, k in enumerate(keys) if k[0] == -1])
        if self.merged and not len(refs):
            raise RunError(f"stage {ctx.stage}: gmp-irt combines the reference models' abilities, and no "
                           "reference call scored (the score matrix's 'reference' rows say why)")  # fmt: skip
        self._fit = (keys, alpha, beta, refs, population(theta))
        return self._fit

    def generation(self, ctx, generation: int, cands) -> list[Estimate]:
        if generation == 0:  # the calibration generation: references and candidates on the whole pool
            ctx.score([(r, ctx.pool) for r in ctx.references()], why="reference")
            calls = ctx.score([(c, ctx.pool) for c in cands])
            return [Estimate(c.fitness, c.metrics, c.error) for c in calls]
        _, alpha, beta, refs, prior = self._calibrate(ctx, generation)
        rng = np.random.default_rng(list(f"evohub-anchors-{ctx.seed}-{ctx.stage}-{generation}".encode()))
        pos, weights = anchors_of(beta, self.anchors, rng)
        anchor_items = [ctx.pool[p] for p in pos]
        N, n = len(ctx.pool), len(pos)
        rest = np.setdiff1d(np.arange(N), pos)
        out = []
        for call in ctx.score([(c, anchor_items) for c in cands]):
            if call.error is not None:
                out.append(Estimate(None, {}, call.error))
                continue
            y = np.asarray(call.scores, dtype=float)
            a, b = alpha[pos], beta[pos]
            theta = ability(y, a, b, refs if self.merged else None, prior)
            unseen = float(_sigmoid(alpha[rest] @ theta - beta[rest]).mean()) if len(rest) else 0.0
            if self.merged:
                weighted = float(weights @ y)
                mp = n / N * weighted + (1 - n / N) * unseen
                est = DELTA * weighted + (1 - DELTA) * mp
            else:
                est = n / N * float(y.mean()) + (1 - n / N) * unseen
            out.append(Estimate(est, {"estimate": est, "anchor_mean": float(y.mean()), "anchors": n}))
        return out


def planned_calls(inputs: PlanInputs, options: dict) -> list[Calls]:
    calibration = Calls(inputs.references + min(inputs.popsize, inputs.evaluations), inputs.n_items)
    anchors = Calls(max(0, inputs.evaluations - inputs.popsize), min(int(options["anchors"]), inputs.n_items))
    return [calibration, anchors, audit_calls(inputs, options)]


_OPTIONS = (
    Option("anchors", 30, "anchor items a candidate is scored on after generation 0", low=1),
    Option("dims", 1, "the IRT model's dimensions (1 or 2)", low=1, high=2),
    *AUDIT_OPTIONS,
)

ESTIMATORS.register(
    Estimator(
        name="irt",
        doc="p-IRT (tinyBenchmarks): full-set accuracy predicted from anchor items, a 2PL model fitted on the job's own models",
        create=lambda options, minibatch_size: IRT(options, merged=False),
        planned_calls=planned_calls,
        options=_OPTIONS,
        needs="binary",
    )
)
ESTIMATORS.register(
    Estimator(
        name="gmp-irt",
        doc="gmp-IRT (MERGE³): p-IRT with the merge's ability a combination of its sources', blended with the anchor mean",
        create=lambda options, minibatch_size: IRT(options, merged=True),
        planned_calls=planned_calls,
        options=_OPTIONS,
        needs="binary",
        min_references=2,  # θ̂ is a combination of the references' abilities
    )
)
