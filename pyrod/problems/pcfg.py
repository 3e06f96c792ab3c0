"""Zipf-PCFG token data: sentences from a random probabilistic context-free grammar with Zipf(α) probabilities.

The grammar (built by :func:`make_grammar`, deterministic in ``grammar_seed``) has ``depth + 1`` levels of
symbols:

* level 0: one start symbol ``S``;
* levels 1 … ``depth − 1``: ``n_nonterminals`` nonterminals each;
* level ``depth``: ``n_nonterminals`` preterminals.

Every symbol above the last level has ``n_rules`` rules; rule ``r`` (0-based) rewrites it into ``rhs_min`` …
``rhs_max`` symbols (length uniform, symbols uniform) of the next level and is chosen with probability
``∝ (r+1)^−α``. Preterminal ``j`` emits one terminal from its own list of ``n_emit`` terminals (a random
subset of the vocabulary ``1 … n_terminals``, sorted by id), the ``i``-th with probability ``∝ (i+1)^−α``.
Because the lists are sorted, small token ids are the frequent ones in every list: the corpus' token
frequencies fall off with id, and more steeply for larger α. ``α = 0`` gives uniform rule and emission
probabilities (the balanced grammar). Token 0 is the end-of-sentence separator.

Sentences are sampled (by ``seed``), joined into one stream ``[0, sentence₁, 0, sentence₂, 0, …]`` and cut into
``n`` consecutive windows of ``context`` tokens: ``X[i] = s[iT : iT+T]`` and the next-token targets
``Y[i] = s[iT+1 : iT+T+1]`` (``T = context``), so ``Y[:, :-1] = X[:, 1:]`` and ``X[i, 0] = Y[i−1, T−1]``.
Returns ``X (n, T)`` and ``Y (n, T)`` int64 token ids in ``0 … n_terminals``.

An unlimited stream of such windows (:class:`TokenStream`, :func:`zipf_pcfg_stream`) serves mini-batch runs: every
window it gives is made of freshly sampled sentences, nothing is reused (a short sentence may of course coincide with
another by chance, as in any corpus), and its position (the generator's state and the tokens drawn but not yet used)
is explicit state, saved in checkpoints. A stream with the key ``(seed, 0x5EED)`` gives exactly the windows of
:func:`zipf_pcfg` (drawn in any number of pieces).

Where this differs from the seed paper: the paper trains GPT-2-sized models on a Zipf-PCFG corpus with a held-out
validation split; its exact grammar sizes are not reproduced here. This generator keeps the ingredients the
paper varies (a hierarchical grammar whose rule and terminal probabilities are Zipf(α), α controlling the
imbalance) at a size a 2-core CPU trains in minutes. The experiments' ``small`` scale trains full batch on a fixed
set and matches *training* loss; their ``medium`` scale trains on mini-batches from the stream and matches held-out
loss, as the paper does.
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Grammar", "make_grammar", "sample_sentence", "zipf_pcfg", "zipf_pcfg_stream", "TokenStream",
           "expected_symbol_counts",
           "expected_token_frequencies", "expected_sentence_length", "GRAMMAR_DEFAULTS"]

#: default grammar parameters of :func:`zipf_pcfg` (all recorded in a problem's ``data_kwargs`` by the experiments)
GRAMMAR_DEFAULTS = dict(alpha=1.0, n_terminals=32, n_nonterminals=8, depth=3, n_rules=4, rhs_min=2, rhs_max=3,
                        n_emit=8, context=32)


@dataclass(frozen=True)
class Grammar:
    """A leveled PCFG. ``rules[ℓ][a]`` is the list of right-hand sides (tuples of level-``ℓ+1`` symbol indices) of
    symbol ``a`` at level ``ℓ`` (``ℓ = 0 … depth−1``), ``rule_probs[ℓ][a]`` their probabilities;
    ``emit[j]`` the terminal ids (in ``1 … n_terminals``) preterminal ``j`` emits, ``emit_probs[j]`` theirs."""

    alpha: float
    n_terminals: int
    depth: int
    rules: tuple
    rule_probs: tuple
    emit: tuple
    emit_probs: tuple

    @property
    def vocab(self) -> int:
        """Number of token ids, ``n_terminals + 1`` (id 0 = end of sentence)."""
        return self.n_terminals + 1


def zipf_probs(k: int, alpha: float) -> np.ndarray:
    """``p_i ∝ (i+1)^−α``, ``i = 0 … k−1`` (float64, sums to 1)."""
    p = np.arange(1, k + 1, dtype=np.float64) ** (-float(alpha))
    return p / p.sum()


def _int(name, v, lo=1):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name}={v!r} must be an int >= {lo}")
    return int(v)


def _check(alpha, n_terminals, n_nonterminals, depth, n_rules, rhs_min, rhs_max, n_emit, context):
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} must be a real number >= 0") from None
    if isinstance(alpha, bool) or not math.isfinite(a) or a < 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    out = dict(alpha=a, n_terminals=_int("n_terminals", n_terminals), n_nonterminals=_int("n_nonterminals",
               n_nonterminals), depth=_int("depth", depth), n_rules=_int("n_rules", n_rules),
               rhs_min=_int("rhs_min", rhs_min), rhs_max=_int("rhs_max", rhs_max), n_emit=_int("n_emit", n_emit),
               context=_int("context", context))
    if out["rhs_max"] < out["rhs_min"]:
        raise ValueError(f"rhs_max={rhs_max!r} must be >= rhs_min={rhs_min!r}")
    if out["n_emit"] > out["n_terminals"]:
        raise ValueError(f"n_emit={n_emit!r} must be <= n_terminals={n_terminals!r}")
    if out["rhs_max"] ** out["depth"] > 100_000:
        raise ValueError(f"depth={depth!r} with rhs_max={rhs_max!r} gives sentences of up to "
                         f"{out['rhs_max'] ** out['depth']} tokens; lower them")
    return out


def make_grammar(*, alpha=1.0, n_terminals=32, n_nonterminals=8, depth=3, n_rules=4, rhs_min=2, rhs_max=3,
                 n_emit=8, grammar_seed=0) -> Grammar:
    """The grammar of the module docstring, deterministic in ``grammar_seed`` (the structure — right-hand sides
    and emission lists — does not depend on ``alpha``; only the probabilities do)."""
    c = _check(alpha, n_terminals, n_nonterminals, depth, n_rules, rhs_min, rhs_max, n_emit, 1)
    rng = np.random.default_rng([int(grammar_seed), 0x9CF6])
    rules, rule_probs = [], []
    p_rule = tuple(float(x) for x in zipf_probs(c["n_rules"], c["alpha"]))
    for level in range(c["depth"]):
        n_sym = 1 if level == 0 else c["n_nonterminals"]
        lev = []
        for _ in range(n_sym):
            rhs = []
            for _ in range(c["n_rules"]):
                length = int(rng.integers(c["rhs_min"], c["rhs_max"] + 1))
                rhs.append(tuple(int(x) for x in rng.integers(0, c["n_nonterminals"], size=length)))
            lev.append(tuple(rhs))
        rules.append(tuple(lev))
        rule_probs.append(tuple(p_rule for _ in lev))
    p_emit = tuple(float(x) for x in zipf_probs(c["n_emit"], c["alpha"]))
    emit = tuple(tuple(int(t) for t in np.sort(rng.choice(c["n_terminals"], size=c["n_emit"], replace=False)) + 1)
                 for _ in range(c["n_nonterminals"]))
    return Grammar(alpha=c["alpha"], n_terminals=c["n_terminals"], depth=c["depth"], rules=tuple(rules),
                   rule_probs=tuple(rule_probs), emit=emit, emit_probs=tuple(p_emit for _ in emit))


@functools.lru_cache(maxsize=4096)
def _cdf(p: tuple) -> list:
    """The cumulative sums of ``p`` (``np.cumsum``, as Python floats), computed once per probability vector."""
    return [float(x) for x in np.cumsum(np.asarray(p, dtype=np.float64))]


def _draw(p, rng: np.random.Generator) -> int:
    """Index ``i`` with probability ``p[i]`` (inverse CDF of one uniform draw: the first cumulative sum above it,
    i.e. ``searchsorted(cumsum(p), u, side="right")``)."""
    cdf = _cdf(p if isinstance(p, tuple) else tuple(float(x) for x in p))
    return min(bisect.bisect_right(cdf, rng.random()), len(cdf) - 1)


def sample_sentence(g: Grammar, rng: np.random.Generator) -> list[int]:
    """One sentence (terminal ids, no separator), left to right."""
    out: list[int] = []
    stack = [(0, 0)]                                     # (level, symbol); pop from the end = leftmost first
    while stack:
        level, a = stack.pop()
        if level == g.depth:
            out.append(g.emit[a][_draw(g.emit_probs[a], rng)])
            continue
        r = _draw(g.rule_probs[level][a], rng)
        stack.extend((level + 1, b) for b in reversed(g.rules[level][a][r]))
    return out


def expected_symbol_counts(g: Grammar) -> list[np.ndarray]:
    """Expected number of occurrences of each level-``ℓ`` symbol in one derivation (``ℓ = 0 … depth``);
    closed form (a product of per-level expected-rewrite matrices)."""
    counts = [np.ones(1)]
    for level in range(g.depth):
        n_next = len(g.emit) if level == g.depth - 1 else len(g.rules[level + 1])
        M = np.zeros((len(g.rules[level]), n_next))
        for a, (rhs, p) in enumerate(zip(g.rules[level], g.rule_probs[level], strict=True)):
            for r, pr in zip(rhs, p, strict=True):
                for b in r:
                    M[a, b] += pr
        counts.append(counts[-1] @ M)
    return counts


def expected_sentence_length(g: Grammar) -> float:
    """Expected number of terminals in one sentence (closed form)."""
    return float(expected_symbol_counts(g)[-1].sum())


def expected_token_frequencies(g: Grammar) -> np.ndarray:
    """Expected fraction of each token id ``0 … n_terminals`` in an infinitely long stream (separator included)."""
    pre = expected_symbol_counts(g)[-1]
    f = np.zeros(g.vocab)
    for j, (ts, ps) in enumerate(zip(g.emit, g.emit_probs, strict=True)):
        for t, p in zip(ts, ps, strict=True):
            f[t] += pre[j] * p
    f[0] = 1.0                                           # one separator per sentence
    return f / f.sum()


class TokenStream:
    """An unlimited stream of next-token windows from grammar ``g`` (module docstring).

    Sentences are sampled by ``numpy.random.default_rng(key)`` and joined as ``[0, sentence₁, 0, sentence₂, 0, …]``;
    :meth:`draw` cuts the next ``n`` windows of ``context`` tokens from it, each window's targets shifted by one
    token, consecutive windows continuing the stream (``X[i+1, 0] = Y[i, T−1]``). ``state_dict()`` /
    ``load_state_dict()``: the generator's state and the tokens sampled but not used yet, so a restored stream
    continues with the very same windows."""

    def __init__(self, g: Grammar, context: int, key):
        self.grammar = g
        self.context = _int("context", context)
        self.key = [int(k) for k in key]
        self.rng = np.random.default_rng(self.key)
        self.buffer: list[int] = [0]           # tokens sampled, not used yet (the first is the next input)
        self.windows = 0                        # windows drawn so far

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` windows: ``X (n, context)``, ``Y (n, context)`` int64 token ids."""
        n = _int("n", n)
        T = self.context
        need = n * T + 1
        while len(self.buffer) < need:
            self.buffer.extend(sample_sentence(self.grammar, self.rng))
            self.buffer.append(0)
        s = np.asarray(self.buffer[:need], dtype=np.int64)
        del self.buffer[:n * T]                 # the last target stays: it is the next window's first input
        self.windows += n
        return np.ascontiguousarray(s[:-1].reshape(n, T)), np.ascontiguousarray(s[1:].reshape(n, T))

    def state_dict(self) -> dict:
        return {"key": list(self.key), "rng": self.rng.bit_generator.state, "buffer": list(self.buffer),
                "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        if list(state["key"]) != self.key:
            raise ValueError(f"stream state of key {state['key']} loaded into a stream of key {self.key}")
        self.rng.bit_generator.state = state["rng"]
        self.buffer = list(state["buffer"])
        self.windows = int(state["windows"])


def _grammar_of(c: dict, seed, grammar_seed):
    """The grammar of checked options ``c`` (:func:`_check`); ``grammar_seed`` None: ``seed``."""
    grammar_seed = _int("grammar_seed", seed if grammar_seed is None else grammar_seed, lo=0)
    return make_grammar(grammar_seed=grammar_seed, **{k: c[k] for k in ("alpha", "n_terminals", "n_nonterminals",
                                                                        "depth", "n_rules", "rhs_min", "rhs_max",
                                                                        "n_emit")})

def zipf_pcfg_stream(*, key, classes=None, n=None, seed=0, path=None, alpha=1.0, n_terminals=32, n_nonterminals=8,
                     depth=3, n_rules=4, rhs_min=2, rhs_max=3, n_emit=8, context=32, grammar_seed=None) -> TokenStream:
    """The stream of :func:`zipf_pcfg`'s language (same options, same grammar) with its own sampling key: the
    generator is ``default_rng([seed, *key])``, so streams with different ``key`` (a tuple of ints) are
    independent samples of one language, and ``key=(0x5EED,)`` reproduces :func:`zipf_pcfg`'s windows.
    ``classes``/``n``/``path`` are ignored (the same signature as the data loaders)."""
    c = _check(alpha, n_terminals, n_nonterminals, depth, n_rules, rhs_min, rhs_max, n_emit, context)
    g = _grammar_of(c, seed, grammar_seed)
    return TokenStream(g, c["context"], [int(seed), *(int(k) for k in key)])


def zipf_pcfg(*, classes=None, n=None, seed=0, path=None, alpha=1.0, n_terminals=32, n_nonterminals=8, depth=3,
              n_rules=4, rhs_min=2, rhs_max=3, n_emit=8, context=32, grammar_seed=None):
    """Next-token data from a Zipf(α) PCFG (module docstring): ``X (n, context)``, ``Y (n, context)`` int64.

    ``n`` = number of windows (sequences), default 64; ``seed`` drives the sampling, ``grammar_seed`` (default:
    ``seed``) the grammar, so a fixed ``grammar_seed`` with varying ``seed`` resamples one language.
    ``classes``/``path`` are ignored (the vocabulary is ``n_terminals + 1``). Deterministic; nothing downloaded.
    """
    c = _check(alpha, n_terminals, n_nonterminals, depth, n_rules, rhs_min, rhs_max, n_emit, context)
    n = 64 if n is None else _int("n", n)
    g = _grammar_of(c, seed, grammar_seed)
    T = c["context"]
    need = n * T + 1
    rng = np.random.default_rng([int(seed), 0x5EED])
    stream = [0]
    while len(stream) < need:
        stream.extend(sample_sentence(g, rng))
        stream.append(0)
    s = np.asarray(stream[:need], dtype=np.int64)
    X = s[:-1].reshape(n, T)
    Y = s[1:].reshape(n, T)
    return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(Y))
