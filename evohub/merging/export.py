"""A parameter-space recipe as a mergekit configuration, so mergekit users can reproduce it.

    >>> print(to_mergekit(recipe, layers=32))     # doctest: +SKIP
    merge_method: dare_ties
    ...

What carries over exactly: the method, base model, models (``repo@revision``), weights and
densities per layer group (as mergekit ``filter`` lists: ``layers.{i}.`` per decoder layer, the
embeddings, then a default for the final norm and LM head), ``normalize``, dtypes. What cannot:
DARE and DELLA masks are random in mergekit (evohub's are keyed by the recipe seed), and mergekit's
``rescale`` matches the L1 norm where evohub divides by the density (DELLA: by each entry's keep
probability); overrides must be plain substrings (mergekit filters are substrings, not regexes).
Method options (DELLA's ``epsilon``, Breadcrumbs' ``gamma``) become top-level ``parameters``.
"""

from __future__ import annotations

import re

from evohub.errors import MergeError
from evohub.spec import ModelRef, Recipe
from evohub.spec.yamlio import dump_yaml

_REGEX_META = re.compile(r"[\\^$.|?*+()\[\]{}]")


def _ref(ref: ModelRef) -> str:
    if ref.path is not None:
        return ref.path
    return f"{ref.repo}@{ref.revision}" if ref.revision else str(ref.repo)


def _at(value: float | tuple[float, ...], group: int) -> float:
    return value[group] if isinstance(value, tuple) else value


def _setting(value: float | tuple[float, ...], overrides: list[tuple[str, float]], layers: int | None):
    """A mergekit parameter setting: a number, or a first-match-wins list of filters."""
    entries: list[dict] = [{"filter": p, "value": v} for p, v in overrides]
    if isinstance(value, tuple) and len(set(value)) > 1:
        if layers is None:
            raise MergeError("per-layer-group values need the number of decoder layers: pass --layers N")
        groups = len(value)
        entries += [{"filter": f"layers.{i}.", "value": value[i * groups // layers]} for i in range(layers)]
        entries.append({"filter": "embed_tokens", "value": value[0]})
        entries.append({"value": value[-1]})
    else:
        scalar = value[0] if isinstance(value, tuple) else value
        if not entries:
            return scalar
        entries.append({"value": scalar})
    return entries


def _model_params(k: int, m, layers: int | None) -> dict:
    """A recipe model's weight and density as mergekit parameters (overrides as filters)."""
    params: dict = {}
    for key in ("weight", "density"):
        value = getattr(m, key)
        if value is None:
            continue
        overrides = []
        for o in m.overrides:
            ov = getattr(o, key)
            if ov is None:
                continue
            if _REGEX_META.search(o.pattern):
                raise MergeError(
                    f"parameter_space.models[{k}].overrides: pattern {o.pattern!r} is a regex; mergekit filters are plain substrings"
                )
            if isinstance(ov, tuple) and len(set(ov)) > 1:
                raise MergeError(
                    f"parameter_space.models[{k}].overrides: per-group override values have no mergekit equivalent"
                )
            overrides.append((o.pattern, ov[0] if isinstance(ov, tuple) else ov))
        params[key] = _setting(value, overrides, layers)
    return params


def to_mergekit(recipe: Recipe, layers: int | None = None) -> str:
    """The mergekit YAML for ``recipe``'s parameter-space part."""
    ps = recipe.parameter_space
    if ps is None:
        raise MergeError("only parameter_space recipes can be exported to mergekit")
    if recipe.data_flow_space is not None:
        raise MergeError(
            "data_flow_space has no mergekit equivalent; export the parameter_space part of a PS-only recipe"
        )
    method = ps.kind
    if method.mergekit is None:
        raise MergeError(f"mergekit has no equivalent of merge method {ps.method!r}")
    config: dict = {"merge_method": method.mergekit}
    if method.shares:
        if any(m.overrides for m in ps.models):
            raise MergeError(f"{ps.method} overrides have no mergekit equivalent")
        w0, w1 = ps.models[0].weight, ps.models[1].weight
        share = tuple(_at(w1, g) / (_at(w0, g) + _at(w1, g)) for g in range(ps.layer_groups))
        config["base_model"] = _ref(ps.models[0].source)
        config["models"] = [{"model": _ref(m.source)} for m in ps.models]
        config["parameters"] = {"t": _setting(share, [], layers)}
    else:
        if recipe.base_model is not None and method.base:
            config["base_model"] = _ref(recipe.base_model)
        config["models"] = [
            {"model": _ref(m.source), "parameters": _model_params(k, m, layers)} for k, m in enumerate(ps.models)
        ]
        if method.weights:
            config["parameters"] = {"normalize": ps.normalize}
        else:  # model_stock: over whole tensors, like evohub
            config["models"] = [{"model": _ref(m.source)} for m in ps.models]
            config["parameters"] = {"filter_wise": False}
        for o in method.options:  # mergekit reads them as defaults of the per-model parameters
            config["parameters"][o.name] = method.option(o.name)
        if method.sparsify == "random" or method.key_domain == "della":
            config["parameters"]["rescale"] = True
    config["dtype"] = "float32"
    config["out_dtype"] = recipe.dtype
    ts = recipe.tokenizer_source
    if ts == "base":
        config["tokenizer_source"] = "base"
    elif isinstance(ts, int):
        config["tokenizer_source"] = _ref(ps.models[ts].source)
    dare = (
        "; DARE masks here are mergekit's own random draws, and mergekit's rescale matches the L1 norm\n"
        "# where evohub divides by the density, so the weights will differ slightly from evohub's.\n"
    )
    header = (
        "# mergekit configuration exported by evohub from an evohub recipe (schema 1).\n"
        f"# evohub merged in float32 with seed {recipe.seed}"
        + (dare if method.sparsify == "random" or method.key_domain == "della" else ".\n")
    )
    return header + dump_yaml(config)
