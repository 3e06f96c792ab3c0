"""Zipf-PCFG data (pyrod/problems/pcfg.py), the causal GPT (pyrod/problems/gpt.py) and Muon's explicit split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyrod
from pyrod.problems.gpt import MUON_ADAM_PARAMS, gpt
from pyrod.problems.pcfg import (
    expected_sentence_length,
    expected_token_frequencies,
    make_grammar,
    sample_sentence,
    zipf_pcfg,
    zipf_probs,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ data
def test_pcfg_shapes_targets_and_determinism():
    X, Y = zipf_pcfg(n=20, seed=3, context=16, alpha=1.0)
    assert X.shape == Y.shape == (20, 16) and X.dtype == Y.dtype == torch.int64
    assert torch.equal(Y[:, :-1], X[:, 1:])                       # next-token targets
    assert torch.equal(X[1:, 0], Y[:-1, -1])                      # consecutive windows of one stream
    assert X[0, 0] == 0 and int(Y.max()) <= 32 and int(X.min()) >= 0
    X2, Y2 = zipf_pcfg(n=20, seed=3, context=16, alpha=1.0)
    assert torch.equal(X, X2) and torch.equal(Y, Y2)
    X3, _ = zipf_pcfg(n=20, seed=4, context=16, alpha=1.0)
    assert not torch.equal(X, X3)
    # a fixed grammar_seed keeps the language: the grammar object depends on grammar_seed only
    assert make_grammar(grammar_seed=5) == make_grammar(grammar_seed=5) != make_grammar(grammar_seed=6)


def test_pcfg_probabilities_are_zipf_and_alpha0_is_uniform():
    g0 = make_grammar(alpha=0.0, n_rules=4, n_emit=5)
    for lev in g0.rule_probs:
        for p in lev:
            np.testing.assert_allclose(p, 0.25)
    np.testing.assert_allclose(g0.emit_probs[0], 0.2)
    g = make_grammar(alpha=1.5, n_rules=4)
    p = np.asarray(g.rule_probs[1][0])
    np.testing.assert_allclose(p[0] / p[1:], (np.arange(2, 5) / 1.0) ** 1.5)
    assert zipf_probs(3, 2.0) == pytest.approx(np.array([1, 1 / 4, 1 / 9]) / (1 + 1 / 4 + 1 / 9))
    # the structure (right-hand sides, emission lists) does not depend on alpha
    assert g.rules == g0.rules and make_grammar(alpha=0.0).emit == make_grammar(alpha=2.0).emit


def test_pcfg_empirical_statistics_match_closed_forms():
    """Mean sentence length and token frequencies of many samples vs the expected-count recursion."""
    g = make_grammar(alpha=1.0, grammar_seed=1)
    rng = np.random.default_rng(0)
    sents = [sample_sentence(g, rng) for _ in range(3000)]
    lens = np.array([len(s) for s in sents], float)
    mu = expected_sentence_length(g)
    assert abs(lens.mean() - mu) < 4 * lens.std() / math.sqrt(len(lens))
    stream = np.concatenate([np.r_[s, 0] for s in sents]).astype(int)
    f = np.bincount(stream, minlength=g.vocab) / len(stream)
    ef = expected_token_frequencies(g)
    assert ef.sum() == pytest.approx(1.0)
    se = np.sqrt(ef * (1 - ef) / len(stream) * 3 * mu)           # generous: tokens within a sentence correlate
    assert np.all(np.abs(f - ef) <= 5 * se + 1e-12)


def test_pcfg_alpha_controls_token_imbalance():
    ent = []
    for a in (0.0, 1.0, 2.0):
        f = expected_token_frequencies(make_grammar(alpha=a))
        f = f[1:][f[1:] > 0]
        f = f / f.sum()
        ent.append(-(f * np.log(f)).sum())
    assert ent[0] > ent[1] > ent[2]


@pytest.mark.parametrize("kw, bad", [({"alpha": -1}, "alpha"), ({"n_emit": 99}, "n_emit"), ({"depth": 0}, "depth"),
                                     ({"rhs_min": 3, "rhs_max": 2}, "rhs_max"), ({"context": 0}, "context"),
                                     ({"n": 0}, "n=")])
def test_pcfg_bad_values(kw, bad):
    with pytest.raises(ValueError, match=bad):
        zipf_pcfg(**kw)


# ------------------------------------------------------------------------------------------------ model
def _tiny(**kw):
    kw = {"dim": 4, "depth": 1, "heads": 2, "mlp_ratio": 2, **kw}
    return pyrod.problem(model="gpt", data="zipf_pcfg", n=3, loss="ce", device="cpu", seed=0,
                         data_kwargs={"n_terminals": 5, "n_nonterminals": 2, "n_emit": 3, "context": 5, "depth": 2},
                         model_kwargs=kw)


def test_gpt_causal_and_attention_matches_torch_sdpa():
    torch.manual_seed(0)
    net = gpt((6,), 7, dim=8, depth=1, heads=2).double()
    ids = torch.randint(0, 7, (3, 6))
    out = net(ids)
    assert out.shape == (3, 6, 7)
    ids2 = ids.clone()
    ids2[:, 4] = (ids2[:, 4] + 1) % 7                       # change position 4: logits before it must not move
    out2 = net(ids2)
    assert torch.equal(out[:, :4], out2[:, :4]) and not torch.allclose(out[:, 4:], out2[:, 4:])
    att = net.blocks[0].attn
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    q, k, v = (f(x).reshape(2, 6, 2, 4).transpose(1, 2) for f in (att.q, att.k, att.v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(att(x), att.o(ref.transpose(1, 2).reshape(2, 6, 8)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="token ids"):
        net(torch.full((1, 3), 7))


def test_layernorm_matches_torch_values():
    from pyrod.problems.gpt import LayerNorm

    ln, ref = LayerNorm(6, bias=True).double(), torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        for p in (ln.weight, ln.bias, ref.weight, ref.bias):
            p.copy_(torch.linspace(-1, 2, 6, dtype=torch.float64))
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(ln(x), ref(x), rtol=1e-12, atol=1e-12)


def test_gpt_loss_is_mean_token_cross_entropy():
    prob = _tiny(bias=True)
    w = prob.w0 + 0.3 * torch.randn(prob.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = prob.outputs(w)
    Y = prob.labels
    ref = -torch.log_softmax(out, -1).gather(-1, Y[..., None]).mean()
    assert float(prob.loss(w)) == pytest.approx(float(ref), rel=1e-12)
    assert prob.accuracy(w) == pytest.approx(float((out.argmax(-1) == Y).double().mean()))


def test_gpt_hvp_d3_against_dense_hessian_and_finite_differences():
    prob = _tiny(bias=True, tie=True)
    gen = torch.Generator().manual_seed(2)
    w = prob.w0 + 0.2 * torch.randn(prob.dim, generator=gen, dtype=torch.float64)
    assert prob.dim < 400
    H = torch.autograd.functional.hessian(prob.loss_fn, w)                # dense reference (reverse-over-reverse)
    u, v = torch.randn(prob.dim, 2, generator=gen, dtype=torch.float64).unbind(1)
    torch.testing.assert_close(prob.hvp(w, v), H @ v, rtol=1e-9, atol=1e-11)
    V = torch.randn(prob.dim, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(prob.hvp(w, V), H @ V, rtol=1e-9, atol=1e-11)
    h = 1e-6                        # central differences: error O(h²) (7.5e-8 relative at h = 1e-5, 7.5e-10 here)
    fd = (prob.grad(w + h * v) - prob.grad(w - h * v)) / (2 * h)
    assert float((prob.hvp(w, v) - fd).norm() / fd.norm()) < 1e-8
    h = 1e-5
    # third derivative: ∇(uᵀHv) against central differences of uᵀH(w)v built from the dense Hessian
    d3 = prob.d3(w, u, v)
    e = torch.randn(prob.dim, generator=gen, dtype=torch.float64)
    Hp = torch.autograd.functional.hessian(prob.loss_fn, w + h * e)
    Hm = torch.autograd.functional.hessian(prob.loss_fn, w - h * e)
    fd3 = float(u @ (Hp - Hm) @ v) / (2 * h)
    assert float(d3 @ e) == pytest.approx(fd3, rel=1e-6)
    assert float(d3 @ e) == pytest.approx(float(prob.d3(w, v, u) @ e), rel=1e-10)   # symmetric in u, v


def test_registry_config_rebuilds_identical_problem():
    prob = _tiny()
    again = pyrod.problem(**prob.config)
    assert torch.equal(prob.w0, again.w0) and torch.equal(prob.labels, again.labels)
    assert float(prob.loss(prob.w0)) == float(again.loss(again.w0))
    with pytest.raises(ValueError, match="vocab"):
        _tiny(vocab=2)


# ------------------------------------------------------------------------------------------------ Muon split
def test_muon_split_hidden_matrices_only():
    prob = _tiny(depth=2)
    names = [b.name for b in prob.blocks]
    opt = pyrod.optimizers.Muon(lr=0.02, adam_params=MUON_ADAM_PARAMS, ns_dtype="float64",
                                weight_decay=0.0).bind(prob)
    sp = opt.split(names)
    assert sorted(sp["muon"]) == sorted(f"blocks.{i}.{m}.weight" for i in range(2)
                                        for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"))
    assert {"tok_emb.weight", "pos_emb.weight", "head.weight", "ln_f.weight"} <= set(sp["adam"])
    # recorded: the config round-trips, and the step really is Adam on the embeddings (same as AdamW alone)
    cfg = opt.config()
    assert pyrod.optimizers.from_config(cfg).adam_blocks == opt.adam_blocks
    g = prob.grad(prob.w0)
    st = opt.init_state(prob.w0, g)
    new, _ = opt.step(st, g)
    adam = opt.adam_part()
    s2, _ = adam.step(adam.init_state(prob.w0, g), g)
    for b in prob.blocks:
        if b.name in sp["adam"]:
            torch.testing.assert_close(new.w[b.slice], s2.w[b.slice], rtol=0, atol=1e-15)
        else:                                              # Muon: orthogonalised update of spectral size lr·scale
            dW = (new.w[b.slice] - prob.w0[b.slice]).view(b.shape)
            assert not torch.allclose(new.w[b.slice], s2.w[b.slice])
            assert float(torch.linalg.matrix_norm(dW, 2)) == pytest.approx(0.02 * opt._scale(b.shape), rel=0.35)
    with pytest.raises(ValueError, match="nope"):
        pyrod.optimizers.Muon(adam_params=("nope*",)).bind(prob)
    # without adam_params every 2-D block (embeddings included) is Muon's, as before
    assert "tok_emb.weight" in pyrod.optimizers.Muon().bind(prob).split(names)["muon"]


# ------------------------------------------------------------------------------------------------ experiment helpers
def test_stage_split_medians_by_thirds():
    from pyrod.experiments.muon_curvature import stage_split

    lv = np.geomspace(3.0, 0.1, 6)
    mt = {"levels": lv, "a_nds": np.array([4, 4, 6, 6, 8, 8.]), "b_nds": np.array([2, 2, 3, 3, 2, 2.]),
          "a_within_nds": np.array([1, 1, 2, 2, 5, 5.]), "b_within_nds": np.array([1, 1, 1, 1, 1, 1.])}
    mt["a_cross_nds"] = mt["a_nds"] - mt["a_within_nds"]
    mt["b_cross_nds"] = mt["b_nds"] - mt["b_within_nds"]
    st = stage_split(mt)
    assert st["early"]["nds_gap"] == 2 and st["early"]["within_gap"] == 0 and st["early"]["cross_gap"] == 2
    assert st["middle"]["within_gap"] == 1 and st["middle"]["cross_gap"] == 2
    assert st["late"]["within_gap"] == 4 and st["late"]["cross_gap"] == 2 and st["late"]["within_gap_dominates"]
    assert not st["early"]["within_gap_dominates"] and st["late"]["adam_over_muon_nds"] == 4
    assert st["late"]["within_share_of_gap"] == pytest.approx(4 / 6)
    assert st["early"]["loss_range"] == [pytest.approx(lv[0]), pytest.approx(lv[1])]


def test_layer_groups_and_layer_split_from_pair_matrix():
    import xarray as xr

    from pyrod.experiments.muon_curvature import layer_groups, layer_split

    names = ["tok_emb.weight", "blocks.0.attn.q.weight", "blocks.0.mlp.fc.weight", "blocks.1.attn.q.weight",
             "head.weight"]
    assert layer_groups(names) == ["tok_emb", "blocks.0", "blocks.0", "blocks.1", "head"]
    assert layer_groups(["1.weight", "1.bias", "3.weight"]) == ["1", "1", "3"]
    rng = np.random.default_rng(0)
    B = rng.standard_normal((3, 5, 5))
    B = B + B.transpose(0, 2, 1)
    ds = xr.Dataset({"block_matrix_nds": (("t", "block", "block2"), B), "nds": ("t", B.sum(axis=(1, 2)))},
                    attrs={"block_names": '["' + '", "'.join(names) + '"]'})
    within, cross, groups, per = layer_split(ds)
    assert groups == ["tok_emb", "blocks.0", "blocks.1", "head"]
    want = np.trace(B, axis1=1, axis2=2) + 2 * B[:, 1, 2]              # layer blocks.0 = tensors 1 and 2
    np.testing.assert_allclose(within, want, rtol=1e-12)
    np.testing.assert_allclose(within + cross, ds["nds"].values, rtol=1e-12)
    np.testing.assert_allclose(per[:, 1], B[:, 1, 1] + B[:, 2, 2] + 2 * B[:, 1, 2], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ issue 13 checks
def test_pcfg_draws_follow_the_zipf_law_fitted_exponent():
    """Fit the exponent of the empirical rank-frequency law of a preterminal's emissions: it is the α given."""
    from pyrod.problems.pcfg import _draw

    for alpha in (0.0, 1.0, 2.0):
        g = make_grammar(alpha=alpha, n_emit=8, n_terminals=32)
        rng = np.random.default_rng(1)
        counts = np.bincount([_draw(np.asarray(g.emit_probs[0]), rng) for _ in range(40000)], minlength=8)
        f = np.sort(counts)[::-1] / counts.sum()
        slope = np.polyfit(np.log(np.arange(1, 9)), np.log(f), 1)[0]
        assert -slope == pytest.approx(alpha, abs=0.08), (alpha, slope)


def test_nds_decomposition_of_a_transformer_step_is_second_order():
    """L(w + εd) − L(w) − (gᵀεd + ½ε²dᵀHd) = O(ε³): the quadratic model's gap shrinks 8× when ε halves."""
    from pyrod.analysis import one_step_decomposition

    prob = _tiny()
    w = prob.w0
    d = -prob.grad(w)
    d = d / torch.linalg.vector_norm(d)
    gaps = []
    for eps in (0.01, 0.005, 0.0025):
        one = one_step_decomposition(prob, w, eps * d, blocks=())
        assert one.actual_decrease > 0 and one.predicted_decrease > 0
        gaps.append(abs(one.gap))
    for a, b in zip(gaps[:-1], gaps[1:], strict=True):
        assert 6.0 < a / b < 10.5, gaps


def _derivable(g, tokens) -> bool:
    """Whether ``tokens`` is a sentence of the leveled grammar ``g`` (a memoised top-down recogniser)."""
    from functools import lru_cache

    toks = tuple(tokens)

    @lru_cache(maxsize=None)
    def ends(level, a, i):
        if level == g.depth:
            return frozenset({i + 1}) if i < len(toks) and toks[i] in g.emit[a] else frozenset()
        out = set()
        for rhs in g.rules[level][a]:
            pos = {i}
            for b in rhs:
                pos = {e for p in pos for e in ends(level + 1, b, p)}
            out |= pos
        return frozenset(out)

    return len(toks) in ends(0, 0, 0)


def test_pcfg_sentences_are_derivations_of_the_grammar():
    g = make_grammar(alpha=1.0, grammar_seed=2)
    rng = np.random.default_rng(3)
    sents = [sample_sentence(g, rng) for _ in range(200)]
    assert all(_derivable(g, s) for s in sents)
    # the recogniser is not vacuous: shuffled or truncated sentences are mostly not derivations
    bad = [list(rng.permutation(s)) for s in sents if len(set(s)) > 2] + [s[:-1] for s in sents if len(s) > 2]
    assert np.mean([_derivable(g, s) for s in bad]) < 0.5
