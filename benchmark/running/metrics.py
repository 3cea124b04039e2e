"""Scoring reconstructions and membership scores. Pure functions: the harness, which alone holds the
true texts, calls them; attacks never do.

Reconstructions come unordered, so each batch is first matched one-to-one to its references
(Hungarian assignment on ROUGE-1 F1, as LAMP and DAGER do); a reference left without a match scores 0,
and surplus reconstructions cost nothing in ROUGE but lower token precision. ROUGE uses Google's
``rouge-score`` package, unstemmed, with its default tokenization (lowercase, [a-z0-9] words).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from scipy.optimize import linear_sum_assignment

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_SCORER = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)


def _tokens(text: str, tokenizer: Any | None) -> list:
    if tokenizer is None:
        return text.lower().split()
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _norm(text: str) -> str:
    return " ".join(text.split())


def match(references: Sequence[str], texts: Sequence[str]) -> list[tuple[int, int]]:
    """One-to-one (reference index, text index) pairs maximizing the total ROUGE-1 F1."""
    if not references or not texts:
        return []
    gain = np.array([[_SCORER.score(r, t)["rouge1"].fmeasure for t in texts] for r in references])
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def private_text(text: str, template: str, labels: Sequence[str] = ()) -> str:
    """The private part of a text: the template's head removed and, where the template's tail (the
    label or response follows it) occurs, everything from the tail on cut; where it does not, a
    trailing label word dropped. Applied to references and reconstructions alike, so a
    reconstruction that only echoes the template and label scores nothing."""
    head, _, tail = template.partition("{text}")
    out = " ".join(text.split())
    h, t = " ".join(head.split()), " ".join(tail.split())
    if h and out.lower().startswith(h.lower()):
        out = out[len(h) :]
    i = out.lower().find(t.lower()) if t else -1
    if i >= 0:
        out = out[:i]
    elif labels:  # no tail to cut at (none in the template, or truncated away): drop a trailing label word
        words = out.split()
        if words and words[-1].lower() in {lab.lower() for lab in labels}:
            out = " ".join(words[:-1])
    return " ".join(out.split())


def score_reconstruction(
    references: Sequence[str], texts: Sequence[str], tokenizer: Any | None = None, template: str | None = None
) -> dict[str, float]:
    """ROUGE-1/2/L F1 averaged over references after matching, exact-match rate, and batch-level
    token recall/precision (multiset overlap of token ids; whitespace words without a tokenizer).

    With ``template``, both sides are cut to their private part (``private_text``, as the harness
    scores rows), so echoing the template and label earns nothing."""
    if template:
        references = [private_text(r, template) for r in references]
        texts = [private_text(t, template) for t in texts]
    out = {k: 0.0 for k in ROUGE_KEYS}
    out.update(exact_match=0.0, token_recall=0.0, token_precision=0.0)
    if not references:
        return out
    exact = 0
    for r, t in match(references, texts):
        scores = _SCORER.score(references[r], texts[t])
        for k in ROUGE_KEYS:
            out[k] += scores[k].fmeasure
        exact += _norm(references[r]) == _norm(texts[t])
    n = len(references)
    for k in ROUGE_KEYS:
        out[k] /= n
    out["exact_match"] = exact / n
    ref_bag = Counter(tok for r in references for tok in _tokens(r, tokenizer))
    rec_bag = Counter(tok for t in texts for tok in _tokens(t, tokenizer))
    common = sum((ref_bag & rec_bag).values())
    out["token_recall"] = common / max(1, sum(ref_bag.values()))
    out["token_precision"] = common / sum(rec_bag.values()) if rec_bag else 0.0
    return out


def token_set_recall(reference_ids: Sequence[Sequence[int]], recovered: Sequence[Sequence[int]]) -> float:
    """The share of the batch's distinct private token ids that the reconstruction holds. A bag of
    tokens answers each token once, which a multiset recall caps by the batch's repeats; and scoring
    ids directly avoids re-tokenizing a bag's decoded text, which merges neighbouring pieces."""
    truth = {t for ids in reference_ids for t in ids}
    found = {t for ids in recovered for t in ids}
    return len(truth & found) / len(truth) if truth else 0.0


def membership_auc(scores: Sequence[float], is_member: Sequence[bool]) -> dict[str, float]:
    """ROC AUC (ties count one half) and the best TPR at FPR <= 1% and <= 5%; higher score = member.

    Non-finite scores rank lowest. With only one class present the AUC is undefined and reported 0.5.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    y = np.asarray(is_member, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and is_member ({y.size}) differ in length")
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return {"mia_auc": 0.5, "tpr_at_1fpr": 0.0, "tpr_at_5fpr": 0.0}
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    auc = (greater + 0.5 * ties) / (pos.size * neg.size)
    return {"mia_auc": float(auc), "tpr_at_1fpr": _tpr_at(pos, neg, 0.01), "tpr_at_5fpr": _tpr_at(pos, neg, 0.05)}


def membership_row(primary: Sequence[float], by_score: Mapping[str, Sequence[float]], is_member: Sequence[bool],
                   n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """A membership cell's columns: the primary score's ``mia_auc``, ``tpr_at_1fpr`` (each with a
    stratified bootstrap 95% interval, ``_lo``/``_hi``) and ``tpr_at_5fpr``; the same for every named
    score as ``mia_<score>_auc`` ...; and the candidate counts."""
    from benchmark.reporting.stats import membership_summary

    y = [bool(m) for m in is_member]
    head = membership_summary(primary, y, "mia", n_boot, seed)
    row: dict[str, float] = {
        "mia_auc": head["mia_auc"], "mia_auc_lo": head["mia_auc_lo"], "mia_auc_hi": head["mia_auc_hi"],
        "tpr_at_1fpr": head["mia_tpr_at_1fpr"], "tpr_at_1fpr_lo": head["mia_tpr_at_1fpr_lo"],
        "tpr_at_1fpr_hi": head["mia_tpr_at_1fpr_hi"], "tpr_at_5fpr": head["mia_tpr_at_5fpr"],
        "n_members": sum(y), "n_nonmembers": len(y) - sum(y),
    }
    for name, scores in by_score.items():
        row.update(membership_summary(scores, y, f"mia_{name}", n_boot, seed))
    return row


def _tpr_at(pos: np.ndarray, neg: np.ndarray, max_fpr: float) -> float:
    """Largest TPR over thresholds "score >= t" whose FPR stays within ``max_fpr``."""
    best = 0.0
    for t in np.unique(np.concatenate([pos, neg, [np.inf]])):
        fpr = float((neg >= t).mean())
        if fpr <= max_fpr:
            best = max(best, float((pos >= t).mean()))
    return best
