"""Which tensors a fault hits: parameter leaves grouped by the module they belong to, and one
wrapper that restricts any weight fault model to the chosen groups.

Groups (``TENSOR_GROUPS``): a model family that declares ``MODULE_PATTERNS`` (GPT-2, Llama: kind ->
module-path patterns) is grouped by those patterns (``jaxfault.models.module_kind``); any other
model by the names of a leaf's path, deepest name first (the first name that matches decides):

* ``lm_head``: the output projection (``lm_head``, ``head``);
* ``embeddings``: token and position embeddings (``wte``, ``wpe``, ``embed_tokens``, ``embedding``,
  ``*_embed``, ...);
* ``norms``: LayerNorm / RMSNorm parameters (any name containing ``norm``, ``ln_1``, ``ln_f``, ...);
* ``attention``: attention projections (``attn``, ``self_attn``, ``attention``, ``q_proj``, ...);
* ``mlp``: feed-forward blocks (``mlp``, ``c_fc``, ``gate_proj``, ``up_proj``, ``down_proj``, ``ffn``);
* ``other``: anything else (a classifier's convolutions, ...).

``select_tensors(fault_model, ["attention", "mlp"])`` returns a fault model that applies
``fault_model`` to every floating leaf (kernels, biases, scales, embedding tables) of the chosen
groups and to nothing else. The wrapped model sees the chosen leaves as a flat tree of
``kernel`` leaves of at least two dimensions (a 1-D leaf as one row), in tree_flatten order, so
every weight fault model (HBM words under an ECC scheme, SRAM words of quantized weights, CiM
variation, bit flips) selects them without code of its own; collections shaped like the
parameters (the write-verify mask) are restricted the same way.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError, nearest_hint
from jaxfault.core.protocol import FaultModel
from jaxfault.core.pytree import path_to_str

PyTree = Any
TENSOR_GROUPS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")
_RULES = (
    ("lm_head", re.compile(r"^(lm_head|head)$")),
    ("embeddings", re.compile(r"^(wte|wpe|embed_tokens|embed_positions|embedding|embeddings|tok_embeddings"
                              r"|pos_embedding|position_embeddings?|token_embeddings?|\w*_embed)$")),
    ("norms", re.compile(r"norm|^ln(_\w+)?$|^ln\d*$")),
    ("attention", re.compile(r"attn|attention|^(q|k|v|o|qkv)_proj$|^(query|key|value)$")),
    ("mlp", re.compile(r"mlp|^(c_fc|fc\d?|gate_proj|up_proj|down_proj|ffn|feed_forward|w[123])$")),
)


def model_patterns(model) -> tuple:
    """A model's MODULE_PATTERNS as a hashable tuple of (kind, patterns) pairs (() when it has none)."""
    pats = getattr(model, "MODULE_PATTERNS", None) or {}
    return tuple((k, tuple(v)) for k, v in pats.items())


def tensor_group(path, patterns: tuple = ()) -> str:
    """Group of a parameter leaf (or a module) from its path: a key path or a '/'-joined name.

    Args:
      path: a pytree key path, or a string such as 'h_0/attn/c_proj/kernel'.
      patterns: a family's module patterns (model_patterns(model)); () uses the name rules.
    Returns:
      one of TENSOR_GROUPS (see the module docstring for the rules).
    """
    name = path if isinstance(path, str) else path_to_str(path)
    if patterns:
        from jaxfault.models.transformer import module_kind

        return module_kind(dict(patterns), name) or "other"
    for part in reversed([p.lower() for p in name.split("/") if p]):
        for group, rule in _RULES:
            if rule.search(part):
                return group
    return "other"


def parse_tensors(tensors) -> tuple[str, ...] | None:
    """Canonical tuple of tensor groups from a list or a comma-separated string; None for 'all'
    (or None). A JaxfaultError names an unknown group."""
    if tensors is None:
        return None
    if isinstance(tensors, str):
        tensors = [t.strip() for t in tensors.split(",") if t.strip()]
    out = []
    for t in tensors:
        if t == "all":
            return None
        if t not in TENSOR_GROUPS:
            raise JaxfaultError(f"unknown tensor group {t!r}{nearest_hint(str(t), TENSOR_GROUPS)}; "
                                f"choose from {', '.join(TENSOR_GROUPS)} or all")
        if t not in out:
            out.append(t)
    if not out:
        raise JaxfaultError("the tensor selection is empty; name at least one group or all")
    return tuple(sorted(out, key=TENSOR_GROUPS.index))


def selected_leaf_names(params: PyTree, tensors, patterns: tuple = ()) -> list[str]:
    """Names of the floating leaves of params in the chosen groups (tree_flatten order)."""
    groups = parse_tensors(tensors)
    return [path_to_str(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
            if _chosen(p, x, groups, patterns)]


def group_sizes(params: PyTree, patterns: tuple = ()) -> dict[str, int]:
    """Number of floating-point parameters in each tensor group (groups with none left out)."""
    out: dict[str, int] = {}
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            g = tensor_group(p, patterns)
            out[g] = out.get(g, 0) + int(x.size)
    return {g: out[g] for g in TENSOR_GROUPS if g in out}


def _chosen(path, leaf, groups, patterns=()) -> bool:
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
        return False
    return groups is None or tensor_group(path, patterns) in groups


def _as_matrix(x):
    return x if x.ndim >= 2 else jnp.reshape(x, (1, -1))


def restrict(tree: PyTree, chosen: list[bool]) -> dict:
    """The chosen leaves of tree (flatten order) as {'t00000': {'kernel': leaf as >= 2-D}, ...}."""
    leaves = jax.tree_util.tree_leaves(tree)
    out, j = {}, 0
    for x, c in zip(leaves, chosen):
        if c:
            out[f"t{j:05d}"] = {"kernel": _as_matrix(jnp.asarray(x))}
            j += 1
    return out


def expand(tree: PyTree, view: dict, chosen: list[bool]) -> PyTree:
    """Inverse of restrict: tree with its chosen leaves replaced by the view's (original shapes)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out, j = [], 0
    for x, c in zip(leaves, chosen):
        if c:
            out.append(jnp.reshape(view[f"t{j:05d}"]["kernel"], jnp.shape(x)).astype(jnp.asarray(x).dtype))
            j += 1
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


@dataclasses.dataclass(frozen=True)
class Selected(FaultModel):
    """A weight fault model restricted to the parameter leaves of some tensor groups."""

    inner: FaultModel
    tensors: tuple
    patterns: tuple = ()

    def __post_init__(self):
        if not isinstance(self.inner, FaultModel):
            raise JaxfaultError(f"select_tensors needs a fault model, got {type(self.inner).__name__}")
        groups = parse_tensors(self.tensors)
        object.__setattr__(self, "tensors", groups if groups is not None else ("all",))

    @property
    def rate_name(self):  # type: ignore[override]
        return self.inner.rate_name

    @property
    def eval_dtype(self):  # type: ignore[override]
        return self.inner.eval_dtype

    @property
    def sites(self):  # type: ignore[override]
        return self.inner.sites

    @property
    def stored_bits(self) -> float:
        """Stored bits per weight of the wrapped model's storage (the selection picks which
        weights are stored that way, not how)."""
        return self.inner.stored_bits

    def perturb_output(self, key, path, module_type, value, rate):
        return self.inner.perturb_output(key, path, module_type, value, rate)

    @property
    def groups(self):
        return None if self.tensors == ("all",) else self.tensors

    def _split(self, variables):
        params = variables["params"]
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        chosen = [_chosen(p, x, self.groups, self.patterns) for p, x in flat]
        if not any(chosen):
            raise JaxfaultError(f"no parameter is in the tensor group(s) {', '.join(self.tensors)}; "
                                f"this model has {', '.join(group_sizes(params, self.patterns)) or 'no float parameters'}")
        pstruct = jax.tree_util.tree_structure(params)
        mirrored = [k for k, v in variables.items()
                    if k != "params" and jax.tree_util.tree_structure(v) == pstruct]
        view = {k: v for k, v in variables.items() if k not in mirrored and k != "params"}
        view["params"] = restrict(params, chosen)
        for k in mirrored:
            view[k] = restrict(variables[k], chosen)
        return chosen, mirrored, view

    def view(self, variables) -> dict:
        """The variables as the wrapped fault model sees them (only the chosen leaves, as kernels)."""
        return self._split(variables)[2]

    def _join(self, variables, chosen, mirrored, out):
        result = {k: v for k, v in out.items() if k not in mirrored and k != "params"}
        result["params"] = expand(variables["params"], out["params"], chosen)
        for k in mirrored:
            if k in out:
                result[k] = expand(variables[k], out[k], chosen)
        return result

    def prepare(self, variables):
        chosen, mirrored, view = self._split(variables)
        return self._join(variables, chosen, mirrored, self.inner.prepare(view))

    def perturb(self, key, variables, rate):
        chosen, mirrored, view = self._split(variables)
        out, stats = self.inner.perturb(key, view, rate)
        return self._join(variables, chosen, mirrored, out), stats

    def with_rate_bound(self, rate_bound) -> "Selected":
        return Selected(self.inner.with_rate_bound(rate_bound), self.tensors, self.patterns)

    def describe(self) -> dict:
        return {**self.inner.describe(), "tensors": list(self.tensors)}


def group_module_patterns(model, tensors) -> tuple[str, ...]:
    """Module-path patterns of the chosen groups of a model family (its MODULE_PATTERNS): the
    modules whose outputs are the groups' activations ('h_*/attn' is the attention output of
    every GPT-2 block). A JaxfaultError when the model declares no patterns or lacks a group."""
    pats = dict(model_patterns(model))
    check_groups = parse_tensors(tensors) or tuple(g for g in TENSOR_GROUPS if g in pats)
    if not pats:
        raise JaxfaultError(f"activation faults by tensor group need a model family with module patterns "
                            f"(GPT-2, Llama); {type(model).__name__} has none")
    missing = [g for g in check_groups if g not in pats]
    if missing:
        raise JaxfaultError(f"{type(model).__name__} has no module group {missing[0]!r}; it has {', '.join(pats)}")
    return tuple(p for g in check_groups for p in pats[g])


def select_tensors(fault_model: FaultModel, tensors, model=None) -> FaultModel:
    """fault_model restricted to the given tensor groups: the one selector of every fault model.

    Weight fault models (HBM, SRAM, CiM, bit flips) hit only the parameter leaves of the groups
    (Selected); activation faults (jaxfault.faults.activations.ActivationBitFlips) hit the outputs of the
    groups' modules (group_module_patterns, any module type); a composition is restricted stage by
    stage.

    Args:
      fault_model: the fault model.
      tensors: groups from TENSOR_GROUPS, as a list or a comma-separated string; 'all' or None
        hits every floating leaf (and, for activation faults, every group's module).
      model: the Flax model, whose MODULE_PATTERNS (if any) define the groups.
    Returns:
      the restricted fault model (the same rate, rate name and evaluation dtype as fault_model).
    """
    from jaxfault.faults.activations import ActivationBitFlips
    from jaxfault.faults.fault_models import Composed

    groups = parse_tensors(tensors)
    if isinstance(fault_model, Composed):
        return Composed(tuple(select_tensors(s, tensors, model) for s in fault_model.stages))
    if isinstance(fault_model, ActivationBitFlips):
        return dataclasses.replace(fault_model, modules=group_module_patterns(model, groups), module_types=())
    return Selected(fault_model, groups or ("all",), model_patterns(model))
