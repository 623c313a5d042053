"""Texts longer than the model's window: how long texts are, which window to train with, and head+tail truncation.

Token lengths. ``count_tokens`` counts each text's tokens as the model would see it uncut (special tokens
included); ``TokenLengths`` holds the distribution: the percentiles ``LENGTH_PERCENTILES`` and the share of texts
a window of each of ``TRUNCATION_POINTS`` tokens would cut.

The window. ``choose_max_length`` (the transfer plan's choice) takes a percentile of the lengths rounded up to a
multiple, no shorter than a floor, and caps it by what the model accepts (``ModelWindow.limit``: the smaller of
the tokenizer's ``model_max_length`` and the encoder's ``max_position_embeddings``) and by the latency SLA.
Padding is per batch in training and serving, so a window costs only on the texts that reach it.

Latency against length: a documented model, not a measurement taken at plan time (a plan must not change with
the load of the machine it runs on). A forward pass costs, per layer, 2 x L x (4h^2 + 2hi) FLOPs in the
projections and feed-forward (linear in the length L) plus 4 x L^2 x h in attention scores and their weighted
sum (quadratic); h is the hidden size and i the feed-forward size. The latency at L is a measured serving figure
(default ``REFERENCE_LATENCY_MS``: the README's serving bench, p99 of the INT8 ONNX replica at concurrency 8 on
a 2-core CPU, MiniLM-L6, eval-suite sentences whose batches of up to 8 run about ``REFERENCE_TOKENS`` tokens)
scaled by the foundation's FLOPs at L over MiniLM-L6's at the reference length. Pure FLOP scaling ignores the
fixed cost of a request, so it overstates how fast latency grows: MiniLM-L6 in PyTorch (one thread, 2-core CPU
under load, one text, median of 15) measured 20 / 26 / 35 / 37 / 74 / 156 ms at 16 / 32 / 64 / 128 / 256 / 512
tokens, 4.5x from 64 to 512 tokens where the FLOPs grow 9.5x. The cap it gives errs on the short, safe side.

Head+tail truncation. Plain truncation (the tokenizer's ``truncation=True``, ``"head"``) keeps a text's first
``max_length`` tokens. Head+tail (``"head_tail"``) keeps its first ``head`` content tokens and its last
``max_length - specials - head``: reviews, tickets and reports often state their verdict at the end, which plain
truncation drops. Sun et al. (2019, "How to Fine-Tune BERT for Text Classification?") found head 128 + tail 382
the best of their truncations for 510-token IMDb reviews; ``DEFAULT_HEAD_SHARE = 0.25`` keeps that proportion at
any window. A text that fits is encoded exactly as plain truncation encodes it. ``bench/long_documents.py``
compares the two on long documents built from the bundled reviews (LoRA, 3 epochs, 240 documents of about 210
tokens): where every review carries the label they tie (0.950 plain / 0.975 head+tail at 64 tokens, 0.992 /
0.983 at 128); where only the last 40 words do, plain truncation is at chance (0.475, 0.454) and head+tail
reaches 0.892 and 0.942. The configs accept head+tail from ``MIN_HEAD_TAIL_LENGTH`` tokens: at 32 the head keeps
8 tokens and the tail about 22; shorter windows leave a head or a tail too short to carry a sentence.

One strategy from plan to serving. ``FineTuneConfig.truncation`` picks it for training (``TokenizedTexts``); the
task bundle records it in its provenance config; the export reads it there, runs its gates with it
(``export.runtime.encode``) and writes it to ``serving.json``; serving (``serving.model.ServingTokenizer``) and the
monitoring reference read it from there. A bundle without the field was trained with plain truncation.

Domain adaptation does not use head+tail: a masked-language model learns the domain's language, not a label, so
nothing is gained by joining a text's two ends across a seam it never has in the wild. With ``"chunks"``
(``encode_chunks``) it trains on every token of a long text, in consecutive windows of ``max_length`` tokens.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TruncationStrategy = Literal["head", "head_tail"]
TRUNCATION_STRATEGIES: tuple[TruncationStrategy, ...] = ("head", "head_tail")
MlmTextStrategy = Literal["head", "chunks"]
MLM_TEXT_STRATEGIES: tuple[MlmTextStrategy, ...] = ("head", "chunks")
DEFAULT_HEAD_SHARE = 0.25
MIN_HEAD_TAIL_LENGTH = 32  # the shortest max_length the configs accept with head_tail (module docstring)
LENGTH_PERCENTILES = (50, 90, 95, 99)
TRUNCATION_POINTS = (64, 128, 256, 512)
MIN_MAX_LENGTH, MAX_MAX_LENGTH = 8, 8192  # the range the training configs accept
REFERENCE_LATENCY_MS = 59.0
REFERENCE_TOKENS = 32
_UNSET_LIMIT = 1_000_000  # tokenizers without a limit report a huge sentinel (1e30) as model_max_length


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Tokens per text as the model would see it uncut: special tokens included, no truncation."""
    if not texts:
        return []
    encoded = tokenizer(
        list(texts), add_special_tokens=True, truncation=False, return_attention_mask=False,
        return_token_type_ids=False, verbose=False,
    )
    return [len(ids) for ids in encoded["input_ids"]]


@dataclass(frozen=True)
class TokenLengths:
    """Token counts of the measured texts (ascending), and how many texts there were before any sampling."""

    lengths: tuple[int, ...]
    texts: int

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("token lengths need at least one measured text")
        if list(self.lengths) != sorted(self.lengths) or self.lengths[0] < 0:
            raise ValueError("TokenLengths.lengths must be non-negative counts in ascending order")

    def percentile(self, q: float) -> int:
        """The smallest count that at least ``q`` percent of the measured texts do not exceed."""
        if not 0.0 < q <= 100.0:
            raise ValueError(f"a percentile must be in (0, 100], got {q}")
        return int(np.quantile(np.asarray(self.lengths), q / 100.0, method="inverted_cdf"))

    def share_longer_than(self, tokens: int) -> float:
        """Share of the measured texts a window of ``tokens`` would cut."""
        return 1.0 - bisect_right(self.lengths, tokens) / len(self.lengths)

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "measured_texts": len(self.lengths),
            "mean": float(np.mean(self.lengths)),
            "longest": self.lengths[-1],
            "percentiles": {f"p{q}": self.percentile(q) for q in LENGTH_PERCENTILES},
            "truncated_share": {str(n): self.share_longer_than(n) for n in TRUNCATION_POINTS},
        }


@dataclass(frozen=True)
class ForwardShape:
    """The sizes a transformer encoder's forward cost depends on (see the module docstring)."""

    hidden: int
    intermediate: int
    layers: int

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ForwardShape.{name} must be >= 1, got {getattr(self, name)}")

    def flops(self, tokens: int) -> float:
        """FLOPs of one forward pass over ``tokens`` tokens: the linear terms plus the quadratic attention term."""
        h, i = float(self.hidden), float(self.intermediate)
        return self.layers * (2.0 * tokens * (4.0 * h * h + 2.0 * h * i) + 4.0 * tokens * tokens * h)


MINILM_L6 = ForwardShape(hidden=384, intermediate=1536, layers=6)
"""The model the reference serving latency was measured on."""


@dataclass(frozen=True)
class ModelWindow:
    """What the foundation accepts (``limit`` tokens; None when neither tokenizer nor config says) and its shape."""

    limit: int | None
    shape: ForwardShape

    def estimated_latency_ms(
        self, tokens: int, reference_ms: float = REFERENCE_LATENCY_MS, reference_tokens: int = REFERENCE_TOKENS
    ) -> float:
        """Serving latency of ``tokens``-token requests by the FLOP model (module docstring)."""
        return reference_ms * self.shape.flops(tokens) / MINILM_L6.flops(reference_tokens)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "hidden": self.shape.hidden, "intermediate": self.shape.intermediate,
                "layers": self.shape.layers}


def model_token_limit(tokenizer_max_length: int | None, max_position_embeddings: int | None) -> int | None:
    """The longest input the model takes: the smaller of the limits that are set (a huge sentinel is unset)."""
    limits = [int(v) for v in (tokenizer_max_length, max_position_embeddings) if v is not None and 0 < v < _UNSET_LIMIT]
    return min(limits) if limits else None


def model_window(tokenizer: PreTrainedTokenizerBase, model_config: Any) -> ModelWindow:
    """The window of a Hugging Face tokenizer and encoder config (BERT-style attribute names)."""
    return ModelWindow(
        limit=model_token_limit(getattr(tokenizer, "model_max_length", None),
                                getattr(model_config, "max_position_embeddings", None)),
        shape=ForwardShape(int(model_config.hidden_size), int(model_config.intermediate_size),
                           int(model_config.num_hidden_layers)),
    )


@dataclass(frozen=True)
class LengthChoice:
    """A chosen ``max_length`` and the figures it was chosen from.

    ``wanted`` is the percentile's token count rounded up to the multiple, no shorter than the floor;
    ``sla_limit`` the longest window (a multiple, or the model's limit) whose estimated latency fits the SLA,
    0 when none does; ``bound_by`` names what decided: percentile, floor, model limit or latency SLA.
    """

    max_length: int
    percentile: float
    percentile_tokens: int
    multiple: int
    floor: int
    wanted: int
    model_limit: int | None
    sla_limit: int
    estimated_latency_ms: float
    latency_sla_ms: float
    bound_by: str
    truncated_share: float
    measured_texts: int

    @property
    def truncation(self) -> TruncationStrategy:
        """``head_tail`` when the percentile's texts do not fit (the model's limit or the SLA capped the window)
        and the window holds a head and a tail (``MIN_HEAD_TAIL_LENGTH``); ``head`` otherwise."""
        capped = self.bound_by in ("model limit", "latency SLA")
        return "head_tail" if capped and self.max_length >= MIN_HEAD_TAIL_LENGTH else "head"

    @property
    def mlm_texts(self) -> MlmTextStrategy:
        """Domain adaptation's counterpart: every token of a long text in windows (``chunks``) where the fine-tuning
        keeps head and tail; ``head`` otherwise."""
        return "chunks" if self.truncation == "head_tail" else "head"

    @property
    def truncation_explanation(self) -> str:
        """What happens to the texts the window cuts, and why this strategy."""
        if self.truncation == "head_tail":
            return (
                f"The p{self.percentile:g} texts do not fit the {self.bound_by}, so training, export and serving keep "
                "each longer text's first quarter-window of tokens and its last (head+tail truncation, where plain "
                "truncation would drop the end, which often carries the verdict); domain adaptation trains on "
                "every token of the long texts in windows (chunks)."
            )
        if self.bound_by in ("model limit", "latency SLA"):
            return (
                f"The p{self.percentile:g} texts do not fit, but a {self.max_length}-token window is too short for "
                f"head+tail (it needs {MIN_HEAD_TAIL_LENGTH}): the longer texts lose their end (plain truncation "
                "keeps the first tokens)."
            )
        return "The longer texts lose their end (plain truncation keeps the first tokens)."

    @property
    def explanation(self) -> str:
        rounded = -(-self.percentile_tokens // self.multiple) * self.multiple
        why = {
            "percentile": f"rounded up to a multiple of {self.multiple}",
            "floor": f"{rounded} rounded up, under the floor of {self.floor}",
            "model limit": f"wanting {self.wanted}, capped at the model's limit",
            "latency SLA": f"wanting {self.wanted}, capped by the latency SLA",
        }[self.bound_by]
        limit = "no stated limit" if self.model_limit is None else f"up to {self.model_limit} tokens"
        sla = (f"the longest window within it: {self.sla_limit}" if self.sla_limit
               else "no window meets it: the SLA needs a smaller model or faster serving")
        return (
            f"max_length {self.max_length}: p{self.percentile:g} of {self.measured_texts:,} texts is "
            f"{self.percentile_tokens} tokens ({why}). The model takes {limit}; the latency model puts "
            f"{self.max_length}-token requests at {self.estimated_latency_ms:.0f} ms against the "
            f"{self.latency_sla_ms:g} ms SLA ({sla}). {self.truncated_share:.1%} of the texts are longer. "
            f"{self.truncation_explanation}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length, "percentile": self.percentile, "percentile_tokens": self.percentile_tokens,
            "multiple": self.multiple, "floor": self.floor, "wanted": self.wanted, "model_limit": self.model_limit,
            "sla_limit": self.sla_limit, "estimated_latency_ms": self.estimated_latency_ms,
            "latency_sla_ms": self.latency_sla_ms, "bound_by": self.bound_by,
            "truncated_share": self.truncated_share, "measured_texts": self.measured_texts,
            "truncation": self.truncation, "mlm_texts": self.mlm_texts, "explanation": self.explanation,
        }


def choose_max_length(
    lengths: TokenLengths,
    window: ModelWindow,
    *,
    percentile: float,
    multiple: int,
    floor: int,
    latency_sla_ms: float,
    reference_ms: float = REFERENCE_LATENCY_MS,
    reference_tokens: int = REFERENCE_TOKENS,
) -> LengthChoice:
    """The percentile rounded up to the multiple and floored, then capped by the model's limit and the SLA.

    When no window meets the SLA the shortest the training configs accept (``MIN_MAX_LENGTH``) is chosen and
    the explanation says the SLA needs a smaller model or faster serving.
    """
    if multiple < 1 or not MIN_MAX_LENGTH <= floor <= MAX_MAX_LENGTH:
        raise ValueError(f"need multiple >= 1 and floor in [{MIN_MAX_LENGTH}, {MAX_MAX_LENGTH}], got {multiple} and {floor}")
    upper = min(window.limit, MAX_MAX_LENGTH) if window.limit is not None else MAX_MAX_LENGTH

    def latency(tokens: int) -> float:
        return window.estimated_latency_ms(tokens, reference_ms, reference_tokens)

    candidates = sorted({*range(multiple, upper + 1, multiple), upper})  # latency grows with length
    fitting = [n for n in candidates if latency(n) <= latency_sla_ms]
    sla_limit = fitting[-1] if fitting else 0
    tokens = lengths.percentile(percentile)
    rounded = -(-tokens // multiple) * multiple
    wanted = min(max(floor, rounded), MAX_MAX_LENGTH)
    chosen = max(MIN_MAX_LENGTH, min(wanted, upper, sla_limit))
    if chosen < wanted:
        bound_by = "model limit" if window.limit is not None and window.limit <= sla_limit else "latency SLA"
    else:
        bound_by = "floor" if rounded < floor else "percentile"
    return LengthChoice(
        max_length=chosen, percentile=percentile, percentile_tokens=tokens, multiple=multiple, floor=floor,
        wanted=wanted, model_limit=window.limit, sla_limit=sla_limit, estimated_latency_ms=latency(chosen),
        latency_sla_ms=latency_sla_ms, bound_by=bound_by, truncated_share=lengths.share_longer_than(chosen),
        measured_texts=len(lengths.lengths),
    )


def head_tail_split(content_tokens: int, head_share: float = DEFAULT_HEAD_SHARE) -> tuple[int, int]:
    """(head, tail) content tokens a window of ``content_tokens`` keeps: the head rounded, the tail the rest."""
    if content_tokens < 1:
        raise ValueError(f"a window needs at least one content token, got {content_tokens}")
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    head = round(content_tokens * head_share)
    return head, content_tokens - head


def truncate_head_tail(ids: Sequence[int], content_tokens: int, head_share: float = DEFAULT_HEAD_SHARE) -> list[int]:
    """The first ``head`` and last ``tail`` ids of a sequence longer than ``content_tokens``; shorter ones whole."""
    head, tail = head_tail_split(content_tokens, head_share)
    if len(ids) <= content_tokens:
        return list(ids)
    return list(ids[:head]) + list(ids[len(ids) - tail:])


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    strategy: TruncationStrategy = "head",
    head_share: float = DEFAULT_HEAD_SHARE,
) -> dict[str, list[list[int]]]:
    """``input_ids`` and ``attention_mask`` per text, unpadded, cut to ``max_length`` tokens by ``strategy``.

    ``head`` is the tokenizer's own truncation. ``head_tail`` tokenises uncut with the model's special tokens,
    keeps the head and tail of the content between them (the special tokens mask marks them), and puts the
    special tokens back around it, so a text that fits gets the same ids either way.
    """
    if strategy not in TRUNCATION_STRATEGIES:
        raise ValueError(f"strategy must be one of {list(TRUNCATION_STRATEGIES)}, got {strategy!r}")
    if strategy == "head":
        plain = tokenizer(list(texts), truncation=True, max_length=max_length, return_token_type_ids=False)
        return {"input_ids": list(plain["input_ids"]), "attention_mask": list(plain["attention_mask"])}
    require_head_tail_window(tokenizer, max_length)
    whole = tokenizer(
        list(texts), add_special_tokens=True, truncation=False, return_special_tokens_mask=True,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,
    )
    ids = [head_tail_between_specials(row, mask, max_length, head_share)
           for row, mask in zip(whole["input_ids"], whole["special_tokens_mask"], strict=True)]
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def head_tail_between_specials(
    ids: Sequence[int], special: Sequence[int], max_length: int, head_share: float = DEFAULT_HEAD_SHARE
) -> list[int]:
    """One text's ids (special tokens included, uncut) cut to ``max_length`` by head+tail: the content between the
    leading and trailing special tokens (``special`` marks them) keeps its head and tail."""
    lead, trail = _special_ends(special)
    if lead == len(ids):
        return list(ids)[:max_length]  # nothing but special tokens
    content = ids[lead:len(ids) - trail]
    kept = truncate_head_tail(content, max_length - lead - trail, head_share)
    return [*ids[:lead], *kept, *ids[len(ids) - trail:]]


def special_token_count(tokenizer: PreTrainedTokenizerBase) -> int:
    """Special tokens the tokenizer adds around one text ([CLS] and [SEP] for BERT)."""
    return int(tokenizer.num_special_tokens_to_add(pair=False))


def require_head_tail_window(tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """Raise unless ``max_length`` holds the tokenizer's special tokens, one head and one tail token."""
    specials = special_token_count(tokenizer)
    if max_length - specials < 2:
        raise ValueError(
            f"head_tail needs a window of at least {specials + 2} tokens with this tokenizer ({specials} special "
            f"tokens, one head and one tail token); got max_length {max_length}"
        )


def encode_chunks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> dict[str, list[list[int]]]:
    """Every token of every text, in consecutive windows of at most ``max_length`` tokens with special tokens.

    A text that fits is one window, encoded as plain truncation encodes it; a longer one becomes
    ``ceil(content / (max_length - specials))`` windows, the last one shorter, each between the text's own leading
    and trailing special tokens. For masked-language-model training (domain adaptation), where no label ties a
    window to its text.
    """
    whole = tokenizer(
        list(texts), add_special_tokens=True, truncation=False, return_special_tokens_mask=True,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,
    )
    ids: list[list[int]] = []
    for row, special in zip(whole["input_ids"], whole["special_tokens_mask"], strict=True):
        lead, trail = _special_ends(special)
        if lead == len(row):
            ids.append(list(row)[:max_length])  # nothing but special tokens
            continue
        width = max_length - lead - trail
        if width < 1:
            raise ValueError(f"chunks need max_length above the {lead + trail} special tokens, got {max_length}")
        content = row[lead:len(row) - trail]
        ids.extend([*row[:lead], *content[start:start + width], *row[len(row) - trail:]]
                   for start in range(0, len(content), width))
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def _special_ends(special: Sequence[int]) -> tuple[int, int]:
    """Special tokens before the first content token and after the last (all of them when there is no content)."""
    lead = next((i for i, flag in enumerate(special) if not flag), len(special))
    if lead == len(special):
        return lead, 0
    return lead, next(i for i, flag in enumerate(reversed(special)) if not flag)


def recorded_truncation(config: Mapping[str, Any], source: object) -> TruncationStrategy:
    """The truncation a bundle records (its training config, or an export's ``serving.json``); ``head`` for bundles
    older than the field. ``source`` names the bundle in the error."""
    value = config.get("truncation", "head")
    if value not in TRUNCATION_STRATEGIES:
        raise ValueError(
            f"{source}: truncation {value!r} is not one of {list(TRUNCATION_STRATEGIES)}; the bundle was written by a "
            "newer or altered tl_platform"
        )
    return value
