"""Hessian of a scalar loss closure as a linear operator (Hessian-vector products).

``H = d^2 L / d theta^2`` for the selected parameters ``theta`` (flattened in ``named_parameters``
order), ``L = loss_fn(model, batch)``. With a ``loader`` the operator is the plain arithmetic MEAN
OF PER-BATCH HESSIANS ``(1/B) sum_b H_b``; for batch-coupled SSL losses this is not the Hessian of
one loss over the concatenated batches: SSL losses couple the samples of a batch (covariances,
all-pairs similarities), so fix one batch of views (:func:`mitools.hessian.freeze_views`) for the Hessian of one loss.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

__all__ = ["HessianOperator", "per_layer_operators", "bn_context", "select_parameters"]

LossFn = Callable[[nn.Module, Any], Tensor]
_BN_MODES = ("eval", "train")
_HVP_MODES = ("auto", "vjp", "func", "graph")
# vmap chunk for chunk_size=None: the vjp engine evaluates its saved graph per chunk (no
# recomputation), and 32 probes per chunk measured fastest on CPU CNNs (benchmarks/bench_hessian.py);
# the func engine recomputes the primal forward + backward per chunk, so it goes all at once.
_DEFAULT_CHUNK = {"vjp": 32, "func": None}


@contextmanager
def bn_context(model: nn.Module, bn_mode: str):
    """Put ``model`` in the requested BatchNorm behaviour; restore mode, flags and buffers after.

    ``eval``: ``model.eval()``, BN normalises with its running statistics (deterministic).
    ``train``: ``model.train()`` with every BN layer's ``track_running_stats`` switched off for the
    duration, so BN normalises with the batch statistics and updates nothing. On exit every
    module's ``training`` flag and BN flag is restored and every buffer is copied back from a
    snapshot, so no forward run inside the context can leave a trace in the running statistics.
    Note: ``train`` also enables dropout (random) if the model has any.
    """
    if bn_mode not in _BN_MODES:
        raise ValueError(f"bn_mode must be one of {_BN_MODES}, got {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    flags = [(m, m.track_running_stats) for m in bns]
    with torch.no_grad():
        saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if bn_mode == "eval":
            model.eval()
        else:
            model.train()
            for m in bns:
                m.track_running_stats = False
        yield
    finally:
        for m, flag in flags:
            m.track_running_stats = flag
        for m, was in modes:
            m.training = was
        with torch.no_grad():
            for b, copy in saved:
                # copy only what changed: an in-place write bumps the buffer's version and would
                # invalidate a gradient graph that saved it (eval-mode BN saves running stats)
                if b.shape != copy.shape or not torch.equal(b, copy):
                    if b.shape == copy.shape:
                        b.copy_(copy)


def select_parameters(
    model: nn.Module, params: Iterable[nn.Parameter] | str | re.Pattern | None
) -> list[tuple[str, nn.Parameter]]:
    """Resolve ``params`` to ``(name, parameter)`` pairs in ``model.named_parameters()`` order.

    ``None``: every parameter with ``requires_grad``; a ``str`` / compiled regex: names matched by
    ``re.search``; an iterable of parameters: those (each must belong to ``model``).
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError("model has no parameters with requires_grad=True")
        return chosen
    if isinstance(params, str | re.Pattern):
        pattern = re.compile(params) if isinstance(params, str) else params
        chosen = [(n, p) for n, p in named if pattern.search(n)]
        if not chosen:
            raise ValueError(
                f"no parameter name matches {pattern.pattern!r}; names: {[n for n, _ in named]}"
            )
    else:
        wanted = list(params)
        if not wanted:
            raise ValueError("params is an empty iterable")
        ids = {id(p): n for n, p in named}
        foreign = [i for i, p in enumerate(wanted) if id(p) not in ids]
        if foreign:
            raise ValueError(f"params at positions {foreign} are not parameters of the model")
        keep = {id(p) for p in wanted}
        chosen = [(n, p) for n, p in named if id(p) in keep]
    frozen = [n for n, p in chosen if not p.requires_grad]
    if frozen:
        raise ValueError(f"parameters without gradients (requires_grad=False): {frozen}")
    return chosen


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)`` so ``functional_call`` swaps the parameters for
    every call the closure makes into the model (two views, predictor, ...)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)  # not registered: its params stay out

    def forward(self, batch: Any) -> Tensor:
        return self._loss_fn(self.model, batch)


def _check_loss(loss: Any) -> Tensor:
    """``loss`` if it is a finite scalar tensor, else a ValueError naming what is wrong (shared
    with the PyHessian backend, which would otherwise fail deep inside PyHessian or return NaN)."""
    if not isinstance(loss, Tensor):
        raise ValueError(f"loss_fn must return a scalar torch.Tensor, got {type(loss).__name__}")
    if loss.ndim != 0:
        raise ValueError(
            f"loss_fn must return a scalar (0-dim) tensor, got shape {tuple(loss.shape)}"
        )
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(f"loss is not finite: {float(loss.detach())}")
    return loss


def _check_loss_graph(loss: Tensor, names: list[str]) -> None:
    if not loss.requires_grad:
        raise ValueError(f"loss does not depend on the selected parameters (no grad_fn): {names}")


class HessianOperator:
    """Hessian of ``loss_fn(model, batch)`` w.r.t. selected parameters, as an ``n x n`` operator.

    Args:
        model: the network; its parameters are never modified.
        loss_fn: closure ``loss_fn(model, batch) -> scalar tensor`` (any loss: two-view SSL or
            supervised). It should be deterministic (no random augmentation inside; freeze views
            with :func:`mitools.hessian.freeze_views`) and side-effect free.
        batch: one batch, passed to ``loss_fn`` as is. Exclusive with ``loader``.
        loader: re-iterable of batches (list, tuple, DataLoader); the operator is the arithmetic
            mean of per-batch Hessians (each batch's loss differentiated on its own). It is
            iterated once per :meth:`matvec` / :meth:`matmat` call (plus once at construction),
            so every pass must yield the same batches (no shuffling, no random augmentation). A
            one-shot iterator (generator, ``iter(...)``, ``map``) is rejected with a ValueError
            before anything is drawn from it: one pass would exhaust it; wrap it in
            ``list(...)`` (which holds every batch in memory).
        params: block selection, see :func:`select_parameters`.
        bn_mode: ``"eval"`` or ``"train"``, see :func:`bn_context`; applied around every forward,
            the model's mode and buffers are restored afterwards.
        hvp: how :meth:`matvec` / :meth:`matmat` evaluate ``H v``. ``"graph"``: build the
            gradient graph once per batch (``create_graph``) and double-backward through it per
            vector (PyHessian's scheme). ``"vjp"``: ``torch.func`` reverse-over-reverse: one
            forward + backward of the primal per :meth:`matmat` call, saved as
            ``vjp(grad(L))``, whose pull-back is ``vmap``'d over the vectors (chunks of
            ``chunk_size``); it computes ``J_g^T v`` like ``graph`` (``g = grad L``). ``"func"``:
            ``torch.func`` forward-over-reverse ``jvp(grad(L))`` with ``vmap`` over the vectors
            (``J_g v``; the primal forward + backward is recomputed per chunk). ``"auto"``
            (default): ``graph`` for single vectors and blocks under ``func_min_block`` columns
            (the batched pass has a fixed cost of a few plain products), ``vjp`` for larger blocks,
            falling back to ``graph`` (with a warning) if the closure is not
            ``torch.func``-compatible. Speed vs memory: ``vjp`` holds the primal's saved tensors
            plus one chunk of batched intermediates (about ``chunk_size`` times the activations
            of one double backward); ``func`` holds one chunk of batched forward-over-reverse
            intermediates; ``graph`` holds one double-backward's worth. All engines do the same
            arithmetic (batching saves per-call overhead, not FLOPs) and agree to rounding. On
            small CPU CNNs ``vjp`` with 32-probe chunks was the fastest block engine; its gain over
            ``graph`` shrinks as the model becomes compute-bound (about 2.2x at 1.2k parameters,
            1.4x at 7.5k, parity at 26k on one CPU thread; see benchmarks/bench_hessian.py).
        chunk_size: ``vmap`` chunk size for :meth:`matmat` under ``vjp`` / ``func`` (bounds
            memory); None = the engine's default (32 for ``vjp``, all at once for ``func``).
        func_min_block: smallest :meth:`matmat` block sent through ``vjp`` under ``"auto"``.

    Vectors are flat tensors of the operator's ``dtype`` and ``device`` (those of the first
    selected parameter). ``op @ v`` dispatches to :meth:`matvec` (1-D) or :meth:`matmat` (2-D,
    columns are vectors). ``n_matvecs`` counts Hessian-vector products (per batch average).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any = None,
        *,
        loader: Iterable[Any] | None = None,
        params: Iterable[nn.Parameter] | str | re.Pattern | None = None,
        bn_mode: str = "eval",
        hvp: str = "auto",
        chunk_size: int | None = None,
        func_min_block: int = 16,
    ) -> None:
        if (batch is None) == (loader is None):
            raise ValueError("pass exactly one of batch and loader")
        if isinstance(loader, Iterator):
            # checked without iter(): that would start DataLoader workers or draw from the input
            raise ValueError(
                "loader must be re-iterable (a DataLoader, list or tuple of batches), got a "
                f"one-shot iterator/generator ({type(loader).__name__}); wrap it in list(...)"
            )
        if bn_mode not in _BN_MODES:
            raise ValueError(f"bn_mode must be one of {_BN_MODES}, got {bn_mode!r}")
        if hvp not in _HVP_MODES:
            raise ValueError(f"hvp must be one of {_HVP_MODES}, got {hvp!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.bn_mode = bn_mode
        self.hvp = hvp
        self.chunk_size = chunk_size
        self.func_min_block = int(func_min_block)
        self.batches: Sequence[Any] | Iterable[Any] = [batch] if loader is None else loader
        self.averaged = loader is not None
        chosen = select_parameters(model, params)
        self.param_names = [n for n, _ in chosen]
        self.params = [p for _, p in chosen]
        self._shapes = [p.shape for p in self.params]
        self._sizes = [p.numel() for p in self.params]
        n = sum(self._sizes)
        self.shape = (n, n)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.n_matvecs = 0
        self._wrapper = _LossModule(model, loss_fn)
        self._func_ok = hvp != "graph"
        self._block_engine = "func" if hvp == "func" else "vjp"
        self._graph: tuple[list[Tensor], list[int]] | None = None
        first = batch if loader is None else next(iter(loader), None)
        if first is None:
            raise ValueError("loader yields no batches")
        graph = self._build_graph(first)
        self.loss = float(self._last_loss)
        if not self.averaged:
            self._graph = graph

    @property
    def n_params(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"HessianOperator(n={self.n_params}, blocks={len(self.params)}, bn_mode={self.bn_mode!r}"
            f", hvp={self.hvp!r}, averaged={self.averaged}, dtype={self.dtype})"
        )

    # ---- flat <-> per-parameter ------------------------------------------------------------------
    def unflatten(self, v: Tensor) -> list[Tensor]:
        """Split a flat (n,) vector (or (m, n) rows) into per-parameter shaped tensors."""
        lead = v.shape[:-1]
        return [
            c.reshape(*lead, *s)
            for c, s in zip(v.split(self._sizes, -1), self._shapes, strict=False)
        ]

    def flatten(self, parts: Sequence[Tensor], batched: bool = False) -> Tensor:
        if batched:
            return torch.cat([t.reshape(t.shape[0], -1) for t in parts], 1)
        return torch.cat([t.reshape(-1) for t in parts])

    # ---- HVP engines -------------------------------------------------------------------------------
    def _build_graph(self, batch: Any) -> tuple[list[Tensor], list[int]]:
        with bn_context(self.model, self.bn_mode):
            loss = _check_loss(self.loss_fn(self.model, batch))
            _check_loss_graph(loss, self.param_names)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        unused = [n for n, g in zip(self.param_names, grads, strict=False) if g is None]
        if unused:
            raise ValueError(f"parameters not used by the loss (no gradient): {unused}")
        if not all(bool(torch.isfinite(g.detach()).all()) for g in grads):
            raise ValueError("gradient of the loss has non-finite entries")
        self._last_loss = loss.detach()
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        return [grads[i] for i in live], live

    def _graph_hvp(self, graph: tuple[list[Tensor], list[int]], parts: list[Tensor], batched: bool):
        grads, live = graph
        out = [torch.zeros_like(t) for t in parts]
        if not live:
            return out  # gradient constant in theta: Hessian is zero
        gouts = [parts[i] for i in live]
        res = None
        if batched:
            try:
                res = torch.autograd.grad(
                    grads,
                    self.params,
                    grad_outputs=gouts,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError:
                res = None
            if res is None:  # closure not vmap-able through backward: loop over vectors
                cols = [
                    self._graph_hvp(graph, [t[j] for t in parts], False)
                    for j in range(parts[0].shape[0])
                ]
                return [torch.stack([c[i] for c in cols]) for i in range(len(parts))]
        else:
            res = torch.autograd.grad(
                grads, self.params, grad_outputs=gouts, retain_graph=True, allow_unused=True
            )
        return [r if r is not None else o for r, o in zip(res, out, strict=False)]

    def _func_hvp(self, batch: Any, parts: list[Tensor]) -> list[Tensor]:
        """``H v`` for the stacked vectors ``parts`` through ``torch.func`` (engine ``vjp`` or
        ``func``), ``vmap``'d in chunks."""
        keys = [f"model.{n}" for n in self.param_names]
        wrapper = self._wrapper

        def loss_of(ps: tuple[Tensor, ...]) -> Tensor:
            return functional_call(
                wrapper, dict(zip(keys, ps, strict=False)), (batch,), strict=False
            )

        primals = tuple(p.detach() for p in self.params)
        g = grad(loss_of)
        engine = self._block_engine
        chunk = self.chunk_size if self.chunk_size is not None else _DEFAULT_CHUNK[engine]
        with bn_context(self.model, self.bn_mode):
            if engine == "vjp":
                # the primal forward + backward runs once here; vmap only replays its pull-back
                _, pull_back = vjp(g, primals)

                def one(cotangent: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                    return pull_back(cotangent)[0]
            else:

                def one(tangent: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                    return jvp(g, (primals,), (tangent,))[1]

            out = vmap(one, chunk_size=chunk)(tuple(parts))
        return list(out)

    def _apply(self, parts: list[Tensor], m: int) -> list[Tensor]:
        """H applied to ``m`` stacked vectors given per parameter as (m, *shape)."""
        use_func = self._func_ok and (
            self.hvp in ("func", "vjp") or m >= self.func_min_block or (self.averaged and m > 1)
        )
        acc: list[Tensor] | None = None
        n_batches = 0
        for batch in self.batches:
            res = None
            if use_func:
                try:
                    res = self._func_hvp(batch, parts)
                except ValueError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any torch.func limitation
                    if self.hvp in ("func", "vjp"):
                        raise
                    warnings.warn(
                        f"torch.func HVP failed ({type(exc).__name__}: {exc}); falling back to "
                        "double backward through the gradient graph",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    self._func_ok = use_func = False
            if res is None:
                graph = self._graph if self._graph is not None else self._build_graph(batch)
                if m == 1:
                    res = [
                        t.unsqueeze(0) for t in self._graph_hvp(graph, [t[0] for t in parts], False)
                    ]
                else:
                    res = self._graph_hvp(graph, parts, True)
            acc = res if acc is None else [a + r for a, r in zip(acc, res, strict=False)]
            n_batches += 1
        if acc is None:
            raise ValueError("loader yields no batches")
        if n_batches > 1:
            acc = [a / n_batches for a in acc]
        self.n_matvecs += m
        return acc

    # ---- public ----------------------------------------------------------------------------------
    def _check_vectors(self, v: Tensor, ndim: int) -> Tensor:
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v)
        if v.ndim != ndim or v.shape[0] != self.n_params:
            want = "(n,)" if ndim == 1 else "(n, m)"
            raise ValueError(
                f"expected a {want} tensor with n={self.n_params}, got {tuple(v.shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError("input vector has non-finite entries")
        return v.to(device=self.device, dtype=self.dtype)

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat (n,) vector."""
        v = self._check_vectors(v, 1)
        out = self.flatten(self._apply(self.unflatten(v.unsqueeze(0)), 1), batched=True)[0]
        return self._check_out(out)

    def matmat(self, V: Tensor) -> Tensor:
        """``H V`` for an (n, m) block of column vectors; blocks of ``func_min_block`` or more
        columns (or any block, under ``hvp="vjp"`` / ``"func"``) go through one batched
        ``torch.func`` pass, ``vmap``'d in chunks of ``chunk_size``."""
        V = self._check_vectors(V, 2)
        m = V.shape[1]
        if m == 0:
            return V.clone()
        out = self.flatten(self._apply(self.unflatten(V.T.contiguous()), m), batched=True).T
        return self._check_out(out.contiguous())

    @staticmethod
    def _check_out(out: Tensor) -> Tensor:
        if not bool(torch.isfinite(out).all()):
            raise ValueError("Hessian-vector product has non-finite entries (NaN or inf)")
        return out.detach()

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if v.ndim == 1 else self.matmat(v)

    def to_dense(self) -> Tensor:
        """The full ``n x n`` matrix (``n`` HVPs); for small models and tests only."""
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        H = self.matmat(eye)
        return (H + H.T) / 2


def per_layer_operators(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any = None,
    *,
    by: str = "module",
    **kwargs: Any,
) -> dict[str, HessianOperator]:
    """One :class:`HessianOperator` per block (diagonal blocks of the full Hessian).

    ``by="module"``: the parameters of each module that owns parameters directly (weight + bias of
    a layer), keyed by module name; ``by="parameter"``: one block per parameter tensor, keyed by
    parameter name. Parameters with ``requires_grad=False`` are skipped. ``kwargs`` go to
    :class:`HessianOperator` (``loader``, ``bn_mode``, ``hvp``, ...).
    """
    if by not in ("module", "parameter"):
        raise ValueError(f"by must be 'module' or 'parameter', got {by!r}")
    if "params" in kwargs:
        raise ValueError("per_layer_operators chooses the blocks itself; do not pass params")
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = name if by == "parameter" else name.rpartition(".")[0]
        groups.setdefault(key, []).append(p)
    if not groups:
        raise ValueError("model has no parameters with requires_grad=True")
    return {
        k: HessianOperator(model, loss_fn, batch, params=ps, **kwargs) for k, ps in groups.items()
    }
