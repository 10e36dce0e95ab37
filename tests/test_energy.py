"""Estimator core: values of docs/energy.md's model worked out by hand, scaling identities, monotonicity, jit/vmap
equal to the per-point loop, bad input."""
import math

import jax
import numpy as np
import pytest

from jaxfault.energy import Hardware, conv, energy_core, energy_jit, fc, to_arrays
from jaxfault.energy.analysis import evaluate, make_sweep_fn
from jaxfault.energy.core import check_design
from jaxfault.core.errors import JaxfaultError

UNITS = (200.0, 6.0, 2.0, 1.0)  # DRAM, GLB, NoC, RF (docs/energy.md)


def _one(layer, qw, qa, pw):
    e = evaluate([layer], qw, qa, pw)
    return float(e.computation[0]), np.asarray(e.data[0], np.float64)


def test_conv_hand_computed_replic_ge_fold():
    # K=3, C=4, M=8, I=10, pad 1, stride 1; qw=8, qa=4, pw=0.25.
    # padded I = 12, O = (10 + 2 - 3)//1 + 1 = 10, replic = 12//3 = 4, fold = ceil(10/14) = 1, keep = .75
    comp, d = _one(conv("c", 3, 4, 8, 10, padding=1), 8, 4, 0.25)
    # MACs = 9*4*8*100*.75 = 21600; * (8/16)(4/16) = 2700
    assert comp == pytest.approx(2700.0, rel=1e-6)
    # weights: DRAM = GLB = 9*4*8*.75 = 216; NoC = O*216 = 2160 (replic >= fold); RF = 9*100*4*8*.75 = 21600
    w = np.array([216 * 200, 216 * 6, 2160 * 2, 21600 * 1]) * (8 / 16)
    # inputs: DRAM = GLB = 144*4 = 576; NoC = (4//1)*3*10*12*4 = 5760; RF = 3*10*12*4*8 = 11520
    i = np.array([576 * 200, 576 * 6, 5760 * 2, 11520 * 1]) * (4 / 16)
    # psums: DRAM = 100*8 = 800; GLB = 2*100*3*8 = 4800; NoC = 2*100*4*8 = 6400; RF = 2*2*3*100*4*8 = 38400
    p = np.array([800 * 200, 4800 * 6, 6400 * 2, 38400 * 1]) * (4 / 16)
    np.testing.assert_allclose(d, np.stack([w, i, p]), rtol=1e-6)
    assert comp + d.sum() == pytest.approx(2700 + 35208 + 35424 + 60000, rel=1e-6)  # 133332


def test_conv_hand_computed_replic_lt_fold():
    # K=7, C=2, M=3, I=40, no pad, 16 bits, unpruned: O = 34, replic = 12//7 = 1, fold = ceil(34/14) = 3
    comp, d = _one(conv("c", 7, 2, 3, 40), 16, 16, 0.0)
    assert comp == pytest.approx(49 * 2 * 3 * 34 * 34, rel=1e-6)  # 339864
    w = [294 * 200, 294 * 6, (1 * 14 * 294) * 2, 49 * 1156 * 6]  # NoC = replic*14*K^2CM
    i = [1600 * 2 * 200, 1600 * 2 * 3 * 6, 7 * 34 * 40 * 2 * 3 * 2, 7 * 34 * 40 * 2 * 3]  # GLB = I^2CM, NoC = KOICM
    p = [1156 * 3 * 200, 2 * 1156 * 1 * 3 * 6, 6 * 1156 * 2 * 3 * 2, 2 * 6 * 7 * 1156 * 2 * 3]
    np.testing.assert_allclose(d, np.array([w, i, p], float), rtol=1e-6)
    assert comp + d.sum() == pytest.approx(3018556, rel=1e-6)


def test_fc_hand_computed():
    # input 2x2x5, M=7, qw=4, qa=8, pw=.5: replic = 12//2 = 6, blocks = 14*6 = 84, keep = .5
    comp, d = _one(fc("f", 5, 7, input_size=2), 4, 8, 0.5)
    assert comp == pytest.approx(4 * 5 * 7 * 0.5 * (4 / 16) * (8 / 16), rel=1e-6)  # 8.75
    w = np.array([70 * 200, 70 * 6, 70 * 2, 70 * 1]) * (4 / 16)  # all levels K^2CM keep = 70
    i = np.array([20 * 200, 20 * 6, (4 * 84 * 5) * 2, (4 * 7 * 5) * 1]) * (8 / 16)
    p = np.array([7 * 200, (2 * 4 * 7) * 6, (1 * 5 * 7) * 2, (2 * 1 * 2 * 5 * 7) * 1]) * (8 / 16)
    np.testing.assert_allclose(d, np.stack([w, i, p]), rtol=1e-6)
    assert comp + d.sum() == pytest.approx(8449.25, rel=1e-6)


def scalar_reference(layers, qw, qa, pw, pe=(12, 14), u=(1, 1, 2, 6, 200)):
    """Independent scalar transcription of docs/energy.md's tables (square shapes only) for whole networks."""
    mac, rf, noc, glb, dram = u
    out = []
    for l, bw, ba, p in zip(layers, qw, qa, pw):
        K, C, M = l.kernel[0], l.in_channels, l.out_channels
        keep, sw, sa = 1 - p, bw / 16, ba / 16
        if l.kind == "conv":
            I = l.input_size[0] + 2 * l.padding[0][0]
            O = (I - K) // l.stride[0] + 1
            replic, fold = pe[0] // K, math.ceil(O / pe[1])
            macs = K * K * C * M * O * O * keep
            W = [K * K * C * M * keep] * 2 + [(O if replic >= fold else replic * pe[1]) * K * K * C * M * keep, K * K * O * O * C * M * keep]
            A = [I * I * C, I * I * C if replic >= fold else I * I * C * M,
                 K * O * I * C * M if replic < fold else (replic // fold) * K * O * I * C, K * O * I * C * M]
            Ps = [O * O * M, 2 * O * O * (C - 1) * M, (K - 1) * O * O * C * M, 2 * (K - 1) * K * O * O * C * M]
        else:
            replic = pe[0] // K
            blocks = pe[1] * replic
            macs = K * K * C * M * keep
            W = [K * K * C * M * keep] * 4
            A = [K * K * C, K * K * C, K * K * blocks * C, K * K * M * C]
            Ps = [M, 2 * (C - 1) * M, (K - 1) * C * M, 2 * (K - 1) * K * C * M]
        lv = (dram, glb, noc, rf)
        out.append(macs * mac * sw * sa + sum(c * e * sw for c, e in zip(W, lv)) + sum(c * e * sa for c, e in zip(A + Ps, lv + lv)))
    return np.array(out)


def random_layers(rng, n=6):
    layers = []
    for j in range(n):
        if rng.random() < 0.3:
            layers.append(fc(f"f{j}", int(rng.integers(1, 300)), int(rng.integers(1, 300)), int(rng.integers(1, 8))))
        else:
            k = int(rng.integers(1, 12))
            p = int(rng.integers(0, 3))
            i = int(rng.integers(max(1, k - 2 * p), 60))
            layers.append(conv(f"c{j}", k, int(rng.integers(1, 200)), int(rng.integers(1, 200)), i, padding=p, stride=int(rng.integers(1, 4))))
    return layers


def test_random_networks_match_independent_transcription():
    rng = np.random.default_rng(0)
    for _ in range(5):
        layers = random_layers(rng)
        qw = rng.integers(1, 17, len(layers)).astype(float)
        qa = rng.integers(1, 17, len(layers)).astype(float)
        pw = rng.uniform(0, 0.9, len(layers))
        got = np.asarray(evaluate(layers, qw, qa, pw).per_layer, np.float64)
        np.testing.assert_allclose(got, scalar_reference(layers, qw, qa, pw), rtol=2e-5)


def test_unpruned_16bit_scaling_identities():
    layers = random_layers(np.random.default_rng(1), 8)
    e16 = evaluate(layers, 16, 16, 0.0)
    comp16, data16 = np.asarray(e16.computation, np.float64), np.asarray(e16.data, np.float64)
    # halving weight bits halves the weight traffic and the MAC energy, leaves inputs/psums alone
    e = evaluate(layers, 8, 16, 0.0)
    np.testing.assert_allclose(np.asarray(e.data)[:, 0], data16[:, 0] / 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e.data)[:, 1:], data16[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e.computation), comp16 / 2, rtol=1e-6)
    # b bits everywhere: data scales by b/16, MACs by (b/16)^2
    for b in (1, 4, 8, 12):
        e = evaluate(layers, b, b, 0.0)
        np.testing.assert_allclose(np.asarray(e.data), data16 * b / 16, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(e.computation), comp16 * (b / 16) ** 2, rtol=1e-6)
    # pruning scales MACs and weight traffic by keep, nothing else
    e = evaluate(layers, 16, 16, 0.25)
    np.testing.assert_allclose(np.asarray(e.data)[:, 0], data16[:, 0] * 0.75, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e.data)[:, 1:], data16[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e.computation), comp16 * 0.75, rtol=1e-6)
    # doubling every unit energy doubles everything; 16-bit unpruned energy = counts * unit energies
    e = evaluate(layers, 16, 16, 0.0, Hardware(2, 2, 4, 12, 400))
    np.testing.assert_allclose(np.asarray(e.per_layer), np.asarray(e16.per_layer) * 2, rtol=1e-6)


def test_monotone_in_bits_and_pruning():
    layers = random_layers(np.random.default_rng(2), 6)
    bits = np.arange(1, 17, dtype=float)
    tw = [float(evaluate(layers, b, 8, 0.1).total) for b in bits]
    ta = [float(evaluate(layers, 8, b, 0.1).total) for b in bits]
    tp = [float(evaluate(layers, 8, 8, p).total) for p in np.linspace(0, 0.95, 12)]
    assert np.all(np.diff(tw) > 0) and np.all(np.diff(ta) > 0) and np.all(np.diff(tp) < 0)


def test_vmap_over_design_points_equals_loop():
    rng = np.random.default_rng(3)
    layers = random_layers(rng, 5)
    la = to_arrays(layers)
    P, L = 16, len(layers)
    qw = rng.integers(1, 17, (P, L)).astype(np.float32)
    qa = rng.integers(1, 17, (P, L)).astype(np.float32)
    pw = rng.uniform(0, 0.9, (P, L)).astype(np.float32)
    hw = Hardware(
        rng.uniform(0.5, 2, P).astype(np.float32), rng.uniform(0.5, 2, P).astype(np.float32),
        rng.uniform(1, 4, P).astype(np.float32), rng.uniform(3, 12, P).astype(np.float32),
        rng.uniform(100, 400, P).astype(np.float32), rng.integers(3, 20, P).astype(np.int32),
        rng.integers(4, 20, P).astype(np.int32),
    )
    batched = make_sweep_fn(layers)(qw, qa, pw, hw)
    for p in range(P):
        one = energy_jit(la, qw[p], qa[p], pw[p], Hardware(*(f[p] for f in hw)))
        np.testing.assert_allclose(np.asarray(batched.data[p]), np.asarray(one.data), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(batched.computation[p]), np.asarray(one.computation), rtol=1e-6)
        # and the un-jitted function with Python-int PE sizes gives the same numbers
        ref = energy_core(la, qw[p], qa[p], pw[p], Hardware(*(float(f[p]) for f in hw[:5]), int(hw.pe_rows[p]), int(hw.pe_cols[p])))
        np.testing.assert_allclose(np.asarray(batched.per_layer[p]), np.asarray(ref.per_layer), rtol=1e-6)
    # the PE array really matters: a different array gives a different answer for a conv net
    assert not np.allclose(np.asarray(batched.total), np.asarray(batched.total)[0])


def test_jit_is_pure_and_repeatable():
    layers = random_layers(np.random.default_rng(4), 4)
    la = to_arrays(layers)
    a = jax.jit(energy_core)(la, 7.0, 5.0, 0.3)
    b = energy_core(la, 7.0, 5.0, 0.3)
    np.testing.assert_allclose(np.asarray(a.data), np.asarray(b.data), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: conv("big", 7, 3, 8, 4, padding=1),  # K=7 > padded input 6
        lambda: conv("zero", 3, 0, 8, 10),  # zero input channels
        lambda: conv("zero", 3, 4, 0, 10),  # zero output channels
        lambda: fc("zero", 0, 10),
        lambda: conv("s", 3, 4, 8, 10, stride=0),
        lambda: conv("g", 3, 4, 6, 10, groups=4),
    ],
)
def test_bad_shapes(make):
    with pytest.raises(JaxfaultError):
        make()


@pytest.mark.parametrize("qw,qa,pw", [(0, 8, 0), (8, -1, 0), (8, 8, 1.0), (8, 8, -0.1), (float("nan"), 8, 0), (8, 8, float("nan"))])
def test_bad_design(qw, qa, pw):
    with pytest.raises(JaxfaultError):
        evaluate([conv("c", 3, 4, 8, 10)], qw, qa, pw)


def test_bad_hardware_and_lengths():
    layers = [conv("c", 3, 4, 8, 10), fc("f", 10, 2)]
    with pytest.raises(JaxfaultError):
        evaluate(layers, [8, 8, 8], 8, 0)
    with pytest.raises(JaxfaultError):
        evaluate(layers, 8, 8, 0, Hardware(pe_rows=0))
    with pytest.raises(JaxfaultError):
        check_design(8, 8, 0, hw=Hardware(dram=-1.0))
    with pytest.raises(JaxfaultError):
        to_arrays([])


def test_grouped_conv_is_groups_independent_convs():
    g = evaluate([conv("g", 3, 8, 12, 10, padding=1, groups=4)], 8, 8, 0.1)
    one = evaluate([conv("c", 3, 2, 3, 10, padding=1)], 8, 8, 0.1)
    np.testing.assert_allclose(np.asarray(g.data), 4 * np.asarray(one.data), rtol=1e-6)


def test_layer_major_batched_totals_equal_vmap():
    from jaxfault.energy.core import total_energy_layer_major

    rng = np.random.default_rng(5)
    layers = random_layers(rng, 5)
    P, L = 12, len(layers)
    qw = rng.integers(1, 17, (P, L)).astype(np.float32)
    qa = rng.integers(1, 17, (P, L)).astype(np.float32)
    pw = rng.uniform(0, 0.9, (P, L)).astype(np.float32)
    hw = Hardware(1.0, 1.0, 2.0, rng.uniform(3, 12, P).astype(np.float32), 200.0, rng.integers(3, 20, P).astype(np.int32), 14)
    got = jax.jit(total_energy_layer_major)(to_arrays(layers), qw, qa, pw, hw)
    want = [float(evaluate(layers, qw[p], qa[p], pw[p], Hardware(1.0, 1.0, 2.0, float(hw.glb[p]), 200.0, int(hw.pe_rows[p]), 14)).total) for p in range(P)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
