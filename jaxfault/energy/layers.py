"""Layer shapes for the estimator: a small `Layer` record, validation, and extraction of the
conv/dense layers of ANY Flax model from one abstract traced forward pass (no hand tables).

Extraction traces `model.apply(variables, x, **apply_kwargs)` with `jax.make_jaxpr` on abstract
values (jax.eval_shape, so no weights are materialised) and collects every
`conv_general_dilated` (transposed convs as convs over the zero-inserted input) and `dot_general`
whose one operand depends only on the parameters (a
weight) and whose other depends on the input (an activation). Pooling, normalisation, ReLU,
residual adds cost nothing in the energy model (docs/energy.md, "The model, exactly"). A dense
layer fed by a reshape of an N,H,W,C feature map is an FC layer with a H x W x C input (the model's
FC input of K x K x C, as for AlexNet's FC1 on 6x6x256);
otherwise its input is 1 x 1 x features. A dense layer applied to an N,H,W,C tensor is a 1x1 conv.

Transformers: a language model (a module with ``TAKES_TOKENS``, e.g. jaxfault.models.GPT2 / Llama)
is traced on one sequence of ``input_shape = (context_length,)`` token ids. Every projection
applied to the (1, L, features) activations is a 1x1 conv over L positions. The two matmuls of
attention, whose operands are both activations, are recorded too (those of
jaxfault.models.transformer.dot_product_attention, traced in the named scopes ``scores`` and
``context``; other activation x activation products are not layers), each as a grouped 1x1
conv whose "weights" are its second operand: the scores Q K^T (per key/value head: query positions x
query heads-per-group as positions, head_dim in, L keys out) and the context P V (L keys in,
head_dim out). Their MACs are heads x L^2 x head_dim each; the full score matrix is counted, as
it is computed, masked entries included. Divided by L these are the MACs of one token attending
to a context of L tokens. Names come from the module path (``h_0/attn/scores``); these layers
store no weights (``num_weights`` 0, so DRAM refresh and write-verify energies count only
parameters). Weight storage counts the kernels of matmul layers, so a lookup table that is
never multiplied (an untied input embedding, GPT-2's position table) is not part of it; a tied
LM head is a matmul with the embedding, named after it (``wte``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from jaxfault.energy.core import LayerArrays, output_size
from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import with_conv_impl
from jaxfault.core.pytree import path_to_str


@dataclasses.dataclass(frozen=True)
class Layer:
    """One conv or FC layer. kernel/input_size/stride are (h, w); padding ((lo, hi), (lo, hi))."""

    name: str
    kind: str  # "conv" or "fc"
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int
    input_size: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    # False for attention's activation x activation matmuls: their "weights" operand (K or V) is
    # computed per input, so it moves like a weight but occupies no weight storage
    stored_weights: bool = True

    @property
    def output_size(self) -> tuple[int, int]:
        if self.kind == "fc":
            return (1, 1)
        return tuple(
            int(output_size(i, k, sum(p), s))
            for i, k, p, s in zip(self.input_size, self.kernel, self.padding, self.stride)
        )

    @property
    def num_weights(self) -> int:
        """Stored weights (0 for an activation x activation matmul)."""
        if not self.stored_weights:
            return 0
        kh, kw = self.kernel
        return kh * kw * (self.in_channels // self.groups) * self.out_channels


def _pair(v, name) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise JaxfaultError(f"{name} must be an int or a pair, got {v!r}")
    return v


def conv(name: str, kernel, in_channels: int, out_channels: int, input_size, padding=0, stride=1, groups=1) -> Layer:
    """Conv layer with symmetric `padding` (per side, as in docs/energy.md) or ((lo, hi), (lo, hi))."""
    if isinstance(padding, (int, np.integer)) or (len(padding) == 2 and isinstance(padding[0], (int, np.integer))):
        ph, pw_ = _pair(padding, "padding")
        pad = ((ph, ph), (pw_, pw_))
    else:
        pad = tuple(tuple(int(x) for x in p) for p in padding)
    layer = Layer(name, "conv", _pair(kernel, "kernel"), int(in_channels), int(out_channels), _pair(input_size, "input_size"), pad, _pair(stride, "stride"), int(groups))
    validate(layer)
    return layer


def fc(name: str, in_channels: int, out_channels: int, input_size=1) -> Layer:
    """FC layer on an input_size x input_size x in_channels input (K x K x C in docs/energy.md)."""
    k = _pair(input_size, "input_size")
    layer = Layer(name, "fc", k, int(in_channels), int(out_channels), k)
    validate(layer)
    return layer


def validate(layer: Layer) -> None:
    """Raise JaxfaultError naming the bad value (zero channels, K > padded input, ...)."""
    n = layer.name
    if layer.kind not in ("conv", "fc"):
        raise JaxfaultError(f"layer {n}: kind must be 'conv' or 'fc', got {layer.kind!r}")
    if layer.in_channels < 1 or layer.out_channels < 1:
        raise JaxfaultError(f"layer {n}: channels must be >= 1, got C={layer.in_channels}, M={layer.out_channels}")
    if min(layer.kernel) < 1:
        raise JaxfaultError(f"layer {n}: kernel size must be >= 1, got {layer.kernel}")
    if min(layer.stride) < 1:
        raise JaxfaultError(f"layer {n}: stride must be >= 1, got {layer.stride}")
    if min(min(p) for p in layer.padding) < 0:
        raise JaxfaultError(f"layer {n}: padding must be >= 0, got {layer.padding}")
    if layer.groups < 1 or layer.in_channels % layer.groups or layer.out_channels % layer.groups:
        raise JaxfaultError(f"layer {n}: groups={layer.groups} must divide C={layer.in_channels} and M={layer.out_channels}")
    if layer.kind == "conv":
        for i, k, p in zip(layer.input_size, layer.kernel, layer.padding):
            if k > i + sum(p):
                raise JaxfaultError(f"layer {n}: kernel {layer.kernel} larger than padded input {tuple(a + sum(b) for a, b in zip(layer.input_size, layer.padding))}")
    else:
        if layer.kernel != layer.input_size:
            raise JaxfaultError(f"layer {n}: FC kernel {layer.kernel} must equal its input size {layer.input_size}")
        if layer.groups != 1:
            raise JaxfaultError(f"layer {n}: grouped FC layers are not supported (groups={layer.groups})")


def to_arrays(layers: Sequence[Layer]) -> LayerArrays:
    """Stack validated layers into the estimator's LayerArrays (int32, shape (L,))."""
    if not layers:
        raise JaxfaultError("the network has no conv/FC layers")
    for l in layers:
        validate(l)
    cols = {
        "is_fc": [l.kind == "fc" for l in layers],
        "kh": [l.kernel[0] for l in layers],
        "kw": [l.kernel[1] for l in layers],
        "c": [l.in_channels for l in layers],
        "m": [l.out_channels for l in layers],
        "ih": [l.input_size[0] for l in layers],
        "iw": [l.input_size[1] for l in layers],
        "pad_h": [sum(l.padding[0]) for l in layers],
        "pad_w": [sum(l.padding[1]) for l in layers],
        "sh": [l.stride[0] for l in layers],
        "sw": [l.stride[1] for l in layers],
        "groups": [l.groups for l in layers],
    }
    return LayerArrays(**{k: np.asarray(v, np.int32) for k, v in cols.items()})


# ------------------------------------------------------------------ extraction from a traced model

@dataclasses.dataclass
class _Info:
    """What a jaxpr variable depends on: the input x, and which parameter leaves."""

    from_x: bool = False
    params: frozenset = frozenset()
    nhwc: tuple | None = None  # (H, W, C) if this is a flatten of an N,H,W,C map


_SHAPE_PRESERVING = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}


def _subjaxprs(eqn):
    for v in eqn.params.values():
        vs = v if isinstance(v, (list, tuple)) else [v]
        for j in vs:
            if isinstance(j, jcore.ClosedJaxpr):
                yield j.jaxpr
            elif isinstance(j, jcore.Jaxpr):
                yield j


def _walk(jaxpr, env: dict, param_names: list[str], out: list, multiplicity: int = 1):
    def get(v):
        if isinstance(v, jcore.Literal):
            return _Info()
        return env.get(v, _Info())

    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        subs = list(_subjaxprs(eqn))
        if subs:
            mult = multiplicity * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else multiplicity
            for sub in subs:
                sub_env = {}
                if len(sub.invars) == len(eqn.invars):
                    sub_env = dict(zip(sub.invars, ins))
                else:  # conservative: every inner input may depend on every outer input
                    u = _Info(any(i.from_x for i in ins), frozenset().union(*[i.params for i in ins]) if ins else frozenset())
                    sub_env = {v: u for v in sub.invars}
                outs = _walk(sub, sub_env, param_names, out, mult)
                if len(outs) == len(eqn.outvars):
                    env.update(zip(eqn.outvars, outs))
            if all(v in env for v in eqn.outvars):
                continue  # the layers inside were recorded by the recursive walk
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            _record_conv(eqn, ins, param_names, out, multiplicity)
        elif name == "dot_general":
            _record_dot(eqn, ins, param_names, out, multiplicity)
        union = _Info(any(i.from_x for i in ins), frozenset().union(*[i.params for i in ins]) if ins else frozenset())
        if name == "reshape" and ins and ins[0].from_x:
            a = eqn.invars[0].aval.shape
            b = eqn.outvars[0].aval.shape
            if len(a) == 4 and len(b) == 2 and a[0] == b[0] and b[1] == a[1] * a[2] * a[3]:
                union.nhwc = tuple(int(s) for s in a[1:])
        elif (name in _SHAPE_PRESERVING or len([i for i in ins if i.from_x]) == 1) and ins:
            xi = [i for i in ins if i.from_x]
            if xi and xi[0].nhwc is not None and eqn.outvars[0].aval.shape == eqn.invars[ins.index(xi[0])].aval.shape:
                union.nhwc = xi[0].nhwc
        for v in eqn.outvars:
            env[v] = union
    return [get(v) for v in jaxpr.outvars]


def _weight_name(info: _Info, param_names: list[str], fallback: str) -> str:
    names = sorted(param_names[i] for i in info.params)
    kern = [n for n in names if n.split("/")[-1] == "kernel"] or names
    if not kern:
        return fallback
    n = kern[0]
    return n[: -len("/kernel")] if n.endswith("/kernel") else n


def _record_conv(eqn, ins, param_names, out, mult):
    x_info, w_info = ins[0], ins[1]
    if not (x_info.from_x and not w_info.from_x and w_info.params):
        return
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, _ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    xs = eqn.invars[0].aval.shape
    ws = eqn.invars[1].aval.shape
    nsp = len(lhs_spec) - 2
    if nsp not in (1, 2):
        raise JaxfaultError(f"only 1-D and 2-D convolutions are supported, got {nsp}-D")
    if any(d != 1 for d in p.get("rhs_dilation", ()) or ()):
        raise JaxfaultError(f"dilated (atrous) convolutions are not modelled (rhs_dilation={p.get('rhs_dilation')})")
    lhs_dil = [int(d) for d in (p.get("lhs_dilation", ()) or ())] or [1] * (len(lhs_spec) - 2)
    if p.get("batch_group_count", 1) != 1:
        raise JaxfaultError("batch_group_count != 1 is not modelled")
    groups = int(p.get("feature_group_count", 1))
    c = int(xs[lhs_spec[1]])
    m = int(ws[rhs_spec[0]])
    # a transposed conv (lhs_dilation d) runs as a conv over the zero-inserted input of size
    # (I - 1) d + 1; its MACs on the inserted zeros are counted (no zero gating: docs/energy.md)
    sp_in = [(int(xs[d]) - 1) * dl + 1 for d, dl in zip(lhs_spec[2:], lhs_dil)]
    sp_k = [int(ws[d]) for d in rhs_spec[2:]]
    pads = [tuple(int(a) for a in pp) for pp in p["padding"]]
    strides = [int(s) for s in p["window_strides"]]
    if nsp == 1:
        sp_in, sp_k, pads, strides = sp_in + [1], sp_k + [1], pads + [(0, 0)], strides + [1]
    if min(min(pp) for pp in pads) < 0:
        raise JaxfaultError(f"negative conv padding {pads} is not modelled")
    name = _weight_name(w_info, param_names, f"conv{len(out)}")
    layer = Layer(name, "conv", tuple(sp_k), c, m, tuple(sp_in), tuple(pads), tuple(strides), groups)
    oshape = eqn.outvars[0].aval.shape
    osp = tuple(int(oshape[d]) for d in dn.out_spec[2:]) + ((1,) if nsp == 1 else ())
    if layer.output_size != osp:
        raise JaxfaultError(f"layer {name}: model output size {layer.output_size} != traced {osp}")
    out.extend([layer] * mult)


def _record_dot(eqn, ins, param_names, out, mult):
    a_info, b_info = ins
    if a_info.from_x and not b_info.from_x and b_info.params:
        xi, wi, x_info, w_info = 0, 1, a_info, b_info
    elif b_info.from_x and not a_info.from_x and a_info.params:
        xi, wi, x_info, w_info = 1, 0, b_info, a_info
    elif a_info.from_x and b_info.from_x and _scope_name(eqn, "").rsplit("/", 1)[-1] in ATTENTION_SCOPES:
        _record_activation_dot(eqn, out, mult)
        return
    else:
        return  # other activation x activation or parameter-only products: not a layer
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb:
        raise JaxfaultError("batched dot_general against a weight is not modelled")
    xc = lc if xi == 0 else rc
    wc = rc if xi == 0 else lc
    xs = eqn.invars[xi].aval.shape
    ws = eqn.invars[wi].aval.shape
    feat = int(np.prod([xs[d] for d in xc]))
    m = int(np.prod([ws[d] for d in range(len(ws)) if d not in wc]))
    free = [int(xs[d]) for d in range(len(xs)) if d not in xc]
    name = _weight_name(w_info, param_names, f"fc{len(out)}")
    spatial = free[1:]  # free[0] is the batch
    if not spatial:
        if x_info.nhwc is not None and x_info.nhwc[0] * x_info.nhwc[1] * x_info.nhwc[2] == feat:
            h, w, c = x_info.nhwc
            layer = Layer(name, "fc", (h, w), c, m, (h, w))
        else:
            layer = Layer(name, "fc", (1, 1), feat, m, (1, 1))
    else:  # dense on a feature map = 1x1 conv over the spatial positions
        sp = (spatial + [1])[:2] if len(spatial) <= 2 else [spatial[0], int(np.prod(spatial[1:]))]
        layer = Layer(name, "conv", (1, 1), feat, m, tuple(sp))
    out.extend([layer] * mult)


# named scopes of jaxfault.models.transformer.dot_product_attention's two matmuls
ATTENTION_SCOPES = ("scores", "context")


def _scope_name(eqn, fallback: str) -> str:
    """The module path of an equation from its name stack, without the root module's class name
    and without the scopes jnp.einsum adds (its subscripts)."""
    parts = [p for p in str(eqn.source_info.name_stack).split("/") if p]
    parts = [p for p in parts[1:] if "," not in p and "->" not in p]
    return "/".join(parts) or fallback


def _record_activation_dot(eqn, out, mult):
    """An activation x activation dot_general (attention's Q K^T or P V) as a grouped 1x1 conv: one
    group per batch-dimension element (the example batch is 1), the lhs free elements as
    positions, the contracted elements in and the rhs free elements out per group."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    prod = lambda dims, shape: int(np.prod([shape[d] for d in dims])) if dims else 1
    groups = prod(lb, ls)
    contracted = prod(lc, ls)
    positions = prod([d for d in range(len(ls)) if d not in lc and d not in lb], ls)
    outputs = prod([d for d in range(len(rs)) if d not in rc and d not in rb], rs)
    name = _scope_name(eqn, f"matmul{len(out)}")
    layer = Layer(name, "conv", (1, 1), groups * contracted, groups * outputs, (positions, 1), groups=groups,
                  stored_weights=False)
    out.extend([layer] * mult)


def _input_struct(model, input_shape: tuple) -> jax.ShapeDtypeStruct:
    """The abstract batch-1 input: token ids (1, L) int32 for a language model, else float32 images."""
    if getattr(model, "TAKES_TOKENS", False):
        if len(input_shape) != 1:
            raise JaxfaultError(f"a language model's input shape is (context_length,), got {input_shape}")
        return jax.ShapeDtypeStruct((1, *input_shape), jnp.int32)
    return jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype if not isinstance(a, jax.ShapeDtypeStruct) else a.dtype), tree)


def abstract_variables(model, input_shape: Sequence[int], init_kwargs: dict | None = None):
    """Shapes of model.init(key, x) for a batch-1 input, without materialising any weight."""
    x = _input_struct(model, tuple(int(s) for s in input_shape))
    kw = dict(init_kwargs or {})
    try:
        return jax.eval_shape(lambda k, xx: model.init(k, xx, **kw), jax.random.key(0), x)
    except TypeError:
        if kw:
            raise
        return jax.eval_shape(lambda k, xx: model.init(k, xx, train=False), jax.random.key(0), x)


def layers_from_model(
    model,
    input_shape: Sequence[int],
    variables: Any = None,
    apply_kwargs: dict | None = None,
) -> list[Layer]:
    """Conv/FC layers of a Flax model, in execution order, for one input of input_shape (H,W,C),
    or, for a language model, one sequence of input_shape = (context_length,) tokens.

    variables: real or abstract (ShapeDtypeStruct) variables; None -> traced from model.init.
    apply_kwargs: extra keyword arguments of model.apply (default: train=False if accepted).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise JaxfaultError(f"input shape must be positive integers, got {input_shape}")
    if variables is None:
        variables = abstract_variables(model, input_shape)
    variables = _abstract(variables)
    x = _input_struct(model, input_shape)

    model = with_conv_impl(model, "xla")  # every convolution as the conv primitive this walker reads

    def trace(kwargs):
        return jax.make_jaxpr(lambda v, xx: model.apply(v, xx, **kwargs))(variables, x)

    if apply_kwargs is None:
        try:
            closed = trace({"train": False})
        except TypeError:
            closed = trace({})
    else:
        closed = trace(apply_kwargs)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(variables)[0]
    param_names = [path_to_str(p) for p, _ in leaves_with_path]
    for prefix in ("params/",):
        param_names = [n[len(prefix):] if n.startswith(prefix) else n for n in param_names]
    jaxpr = closed.jaxpr
    n_param = len(leaves_with_path)
    env = {}
    for i, v in enumerate(jaxpr.invars):
        env[v] = _Info(False, frozenset([i])) if i < n_param else _Info(True)
    for v in jaxpr.constvars:
        env[v] = _Info()
    out: list[Layer] = []
    _walk(jaxpr, env, param_names, out)
    if not out:
        raise JaxfaultError(f"no conv/dense layers found in {type(model).__name__}")
    # disambiguate repeated names (weight sharing / scan) so table rows stay unique
    seen: dict[str, int] = {}
    result = []
    for l in out:
        k = seen.get(l.name, 0)
        seen[l.name] = k + 1
        result.append(dataclasses.replace(l, name=l.name if k == 0 else f"{l.name}#{k}"))
    for l in result:
        validate(l)
    return result
