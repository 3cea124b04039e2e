"""The public prompt template as token ids, and cutting the private text back out of a sequence.

Clients wrap each private text in a public template (``"Tweet: {text}\\nSentiment:"`` plus a label
word). Its prefix seeds the sequence search with known tokens, and the reconstruction reported to the
harness is the part between the prefix and the suffix, since the references are the bare texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TemplateIds:
    lead: tuple[int, ...]  # special tokens the tokenizer puts first (BOS, [CLS])
    prefix: tuple[int, ...]  # the template before {text}, trailing whitespace stripped
    suffix: tuple[int, ...]  # the template after {text}, stripped
    trail: tuple[int, ...] = ()  # special tokens the tokenizer puts last ([SEP])

    @property
    def start(self) -> list[int]:
        return list(self.lead) + list(self.prefix)

    @property
    def known(self) -> set[int]:
        return set(self.lead) | set(self.prefix) | set(self.suffix)


def _ids(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def template_ids(tokenizer: Any, template: str) -> TemplateIds:
    head, _, tail = (template or "{text}").partition("{text}")
    probe = "hello"
    with_sp = _ids(tokenizer, probe, special=True)
    plain = _ids(tokenizer, probe)
    lead: list[int] = []
    trail: list[int] = []
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i : i + len(plain)] == plain:
            lead, trail = with_sp[:i], with_sp[i + len(plain) :]
            break
    prefix = _ids(tokenizer, head.rstrip()) if head.strip() else []
    suffix = _ids(tokenizer, tail.strip()) if tail.strip() else []
    return TemplateIds(tuple(lead), tuple(prefix), tuple(suffix), tuple(trail))


def harness_ids(tokenizer: Any, template: str, decoder: bool) -> TemplateIds:
    """The template as the harness tokenizes inputs: decoders get the formatted prompt without special
    tokens, encoders the bare text with their special tokens ([CLS] ... [SEP])."""
    t = template_ids(tokenizer, template)
    if decoder:
        return TemplateIds((), t.prefix, t.suffix, ())
    return TemplateIds(t.lead, (), (), t.trail)


def _find(seq: Sequence[int], sub: Sequence[int], start: int = 0) -> int:
    n = len(sub)
    if n == 0:
        return -1
    for i in range(start, len(seq) - n + 1):
        if list(seq[i : i + n]) == list(sub):
            return i
    return -1


def decode(ids: Sequence[int], tokenizer: Any) -> str:
    """A recovered sequence as text, decoded the way the harness decodes its references."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def extract_text(ids: Sequence[int], tpl: TemplateIds, tokenizer: Any) -> str:
    """Decode the private-text part of a recovered token sequence."""
    ids = list(ids)
    begin = 0
    if tpl.lead and ids[: len(tpl.lead)] == list(tpl.lead):
        begin = len(tpl.lead)
    if tpl.prefix and ids[begin : begin + len(tpl.prefix)] == list(tpl.prefix):
        begin += len(tpl.prefix)
    end = _find(ids, tpl.suffix, begin)
    if end < 0:
        end = len(ids)
    return tokenizer.decode(ids[begin:end], skip_special_tokens=True).strip()
