"""A deployed model as the server sees it: the training tokenizer, an inference runner, labels and projection.

Preprocessing is the training tokenizer itself (the exported bundle's ``tokenizer/`` is the task bundle's, byte
for byte), cut to ``max_length`` by the strategy training used (``serving.json``'s ``truncation``: ``head`` or
``head_tail``, see ``training.long_text``), as ``TokenizedTexts`` cuts it. Texts are tokenised once, per text, so the
batcher can group them by length; ``pad_batch`` then pads a group exactly as ``export.runtime.encode`` does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tl_platform.checkpoints.bundle import BundleError, verify_bundle
from tl_platform.export.runtime import Encoded, OnnxClassifier, pad_ids
from tl_platform.monitoring.features import EmbeddingProjection
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.log_schema import PROJECTION_COLUMNS
from tl_platform.training.long_text import (
    TRUNCATION_STRATEGIES,
    TruncationStrategy,
    encode_texts,
    head_tail_between_specials,
    recorded_truncation,
    require_head_tail_window,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Runner = Callable[[Encoded], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TokenizedText:
    """One text's token ids (special tokens included, truncated at max_length) and its monitoring features."""

    input_ids: tuple[int, ...]
    unknown_share: float
    chars: int

    @property
    def length(self) -> int:
        return len(self.input_ids)


class ServingModel(Protocol):
    """What the server needs of a model; tests plug in wrappers (slow, failing) through the app's loader."""

    version: str
    precision: str
    max_length: int
    labels: tuple[str, ...]
    label_names: tuple[str, ...]

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]: ...

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(logits, sentence embeddings) for a batch of token-id sequences, rows in input order."""
        ...

    def project(self, embeddings: np.ndarray) -> np.ndarray: ...


ModelLoader = Callable[[VariantSpec, int], ServingModel]  # (spec, intra_op_threads) -> model


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, truncation: TruncationStrategy = "head"
) -> list[TokenizedText]:
    """Token ids exactly as training produces them (``long_text.encode_texts``, as ``TokenizedTexts`` calls it)."""
    if truncation == "head":  # the wrapper's own truncation: what encode_texts calls for "head", and slow wrappers offer
        ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    else:
        ids = encode_texts(tokenizer, texts, max_length, truncation)["input_ids"]
    return _with_features(texts, ids, tokenizer.unk_token_id)


CHARS_PER_TOKEN_BOUND = 16  # natural text averages 4 to 6 characters a token; 16 leaves a wide margin


def fewest_tokens(texts: Sequence[str], max_length: int) -> int:
    """A lower bound of the tokens ``texts`` take once tokenised, without tokenising them: the two special tokens
    plus one per whitespace-separated word (WordPiece, BPE and SentencePiece give every word at least one; a
    character count would not bound them, since WordPiece makes one unknown token of a word over 100 characters),
    at most ``max_length`` a text."""
    return sum(min(max_length, len(text.split()) + 2) for text in texts)
_WORD_BREAKS = (" ", "\n", "\t", "\r")


def word_prefix(text: str, max_chars: int) -> str | None:
    """``text`` cut at the last whitespace at or before ``max_chars``, or None when it needs no cut (or has no
    whitespace there to cut at).

    Cut before a whitespace, the prefix splits into the same words as the start of the whole text (the
    tokenizers' normalisers are per character, their pre-tokenisers split at whitespace), so its tokens are
    the first tokens of the whole text's.
    """
    if len(text) <= max_chars:
        return None
    head = text[: max_chars + 1]
    cut = max(head.rfind(brk) for brk in _WORD_BREAKS)
    return text[:cut] if cut > 0 else None


def _with_features(texts: Sequence[str], token_ids: Sequence[Sequence[int]], unk_id: int | None) -> list[TokenizedText]:
    result = []
    for text, ids in zip(texts, token_ids, strict=True):
        unknown = sum(1 for i in ids if i == unk_id) / max(len(ids), 1)
        result.append(TokenizedText(tuple(int(i) for i in ids), float(unknown), len(text)))
    return result


class ServingTokenizer:
    """The training tokenizer as serving calls it, many times a second from several threads.

    A fast tokenizer is driven through its own copy of the Rust backend (the same tokenizer.json), set once to
    truncate as ``tokenizer(texts, truncation=True, max_length=...)`` does: the Python wrapper sets truncation
    on every call, which costs more than the encoding of a short text and is not safe from two threads at once
    ("Already borrowed"). Tests hold the ids equal to the wrapper's on arbitrary text. A slow tokenizer goes
    through the wrapper under a lock.

    A text over ``max_length * CHARS_PER_TOKEN_BOUND`` characters is first cut at a word break below that bound
    (``word_prefix``), so a 10,000-character text is not tokenised whole to keep its first 128 tokens. When the
    cut text still fills ``max_length`` its ids are those of the whole text; when it does not (a text of very
    long words or runs of whitespace), the whole text is tokenised. Left truncation keeps the end of a text and
    is never cut. ``chars`` stays the whole text's length.

    With ``truncation="head_tail"`` the backend tokenises each text whole (no truncation, no character cut: the
    tail is needed too; request texts are bounded by ``ServingConfig.max_text_chars``) and keeps the head and
    tail of the content between its special tokens, as ``long_text.encode_texts`` does in training.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: TruncationStrategy = "head"
    ) -> None:
        from tokenizers import Tokenizer

        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {list(TRUNCATION_STRATEGIES)}, got {truncation!r}")
        self.max_length = max_length
        self.truncation: TruncationStrategy = truncation
        side = str(getattr(tokenizer, "truncation_side", "right"))
        cuts_prefix = side == "right" and truncation == "head"
        self.max_chars: int | None = max_length * CHARS_PER_TOKEN_BOUND if cuts_prefix else None
        if truncation == "head_tail":
            require_head_tail_window(tokenizer, max_length)
        self._wrapper = tokenizer
        self._unk_id = tokenizer.unk_token_id
        self._lock = threading.Lock()
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend: Tokenizer | None = None
        if backend is not None:
            own = Tokenizer.from_str(backend.to_str())
            own.no_padding()
            if truncation == "head":
                own.enable_truncation(max_length, direction=str(getattr(tokenizer, "truncation_side", "right")))
            else:
                own.no_truncation()
            self._backend = own

    def __call__(self, texts: Sequence[str]) -> list[TokenizedText]:
        cuts = [word_prefix(text, self.max_chars) for text in texts] if self.max_chars is not None else []
        if not any(cut is not None for cut in cuts):
            return self._ids(texts)
        cut_texts = [text if cut is None else cut for text, cut in zip(texts, cuts, strict=True)]
        ids = [tokens.input_ids for tokens in self._ids(cut_texts)]
        # a cut text that no longer fills max_length may lose tokens the whole text has: tokenise those whole
        short = [i for i, cut in enumerate(cuts) if cut is not None and len(ids[i]) < self.max_length]
        if short:
            for i, tokens in zip(short, self._ids([texts[i] for i in short]), strict=True):
                ids[i] = tokens.input_ids
        return _with_features(texts, ids, self._unk_id)

    def _ids(self, texts: Sequence[str]) -> list[TokenizedText]:
        if self._backend is None:
            with self._lock:
                return tokenize_texts(self._wrapper, texts, self.max_length, self.truncation)
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=True)
        if self.truncation == "head":
            return _with_features(texts, [e.ids for e in encodings], self._unk_id)
        cut = [head_tail_between_specials(e.ids, e.special_tokens_mask, self.max_length) for e in encodings]
        return _with_features(texts, cut, self._unk_id)


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> Encoded:
    """Pad to the longest sequence of the batch; the same arrays ``export.runtime.encode`` builds."""
    if not token_ids:
        raise ValueError("pad_batch needs at least one sequence")
    input_ids, mask = pad_ids(token_ids, pad_id, padding_side)
    lengths = mask.sum(axis=1)
    return Encoded(input_ids, mask, np.zeros(len(token_ids), dtype=np.float64), lengths)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


class BundleModel:
    """An exported bundle's tokenizer, labels and projection around a runner (ONNX Runtime or torch eager)."""

    def __init__(
        self, version: str, precision: str, bundle: Path, runner: Runner, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        serving = json.loads((bundle / "serving.json").read_text())
        self.version = version
        self.precision = precision
        self.bundle = bundle
        self.max_length = int(serving["max_length"])
        try:  # a bundle exported before the field was trained with plain truncation
            self.truncation = recorded_truncation(serving, bundle / "serving.json")
        except ValueError as err:
            raise BundleError(str(err)) from err
        self.labels = tuple(str(label) for label in serving["labels"])
        self.label_names = tuple(str(name) for name in serving.get("label_names", serving["labels"]))
        self.projection = EmbeddingProjection.from_json(json.loads((bundle / "projection.json").read_text()))
        components = len(self.projection.components)
        if components > PROJECTION_COLUMNS:  # exported before ExportConfig bounded it by the log's columns
            raise BundleError(
                f"{bundle}: projection has {components} components; the prediction log holds at most "
                f"{PROJECTION_COLUMNS} (re-export with ExportConfig.projection_components <= {PROJECTION_COLUMNS})"
            )
        self._runner = runner
        self._tokenizer = ServingTokenizer(tokenizer, self.max_length, self.truncation)
        self._pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._padding_side = str(getattr(tokenizer, "padding_side", "right"))

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self._tokenizer(texts)

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        return self._runner(pad_batch(token_ids, self._pad_id, self._padding_side))

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return self.projection.transform(embeddings)

    def __repr__(self) -> str:
        return f"BundleModel(version={self.version!r}, precision={self.precision!r}, bundle={str(self.bundle)!r})"


def load_variant(spec: VariantSpec, intra_op_threads: int = 1) -> ServingModel:
    """Verify the exported bundle (and the task bundle for ``torch``), then load it fully; raise BundleError.

    A spec with ``bundle_sha256`` also needs the bundle's manifest to be the one the record was written for.
    """
    from transformers import AutoTokenizer

    manifest = verify_bundle(spec.bundle, expected_stage="exported")
    if spec.bundle_sha256 is not None and manifest.bundle_sha256 != spec.bundle_sha256:
        raise BundleError(
            f"variant {spec.version}: {spec.bundle} has manifest SHA-256 {manifest.bundle_sha256}, but the deployment "
            f"record expects bundle_sha256 {spec.bundle_sha256}; the bundle changed since it was deployed, or the "
            "record names the wrong bundle"
        )
    serving = json.loads((spec.bundle / "serving.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(spec.bundle / "tokenizer", local_files_only=True)
    runner: Runner
    if spec.precision in ("int8", "fp32"):
        onnx = OnnxClassifier(spec.bundle / str(serving[spec.precision]), intra_op_threads=intra_op_threads)
        runner = onnx.run
    else:
        assert spec.torch_bundle is not None  # VariantSpec guarantees it for torch
        runner = _torch_runner(spec.torch_bundle, str(serving["task_bundle_sha256"]), intra_op_threads)
    return BundleModel(spec.version, spec.precision, spec.bundle, runner, tokenizer)


def _torch_runner(task_bundle: Path, expected_sha256: str, threads: int) -> Runner:
    """PyTorch FP32 eager on the task bundle the export came from, with the export's logits-plus-pooling wrapper."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tl_platform.checkpoints.bundle import load_bundle
    from tl_platform.export.onnx_export import logits_and_embedding  # the exact module the ONNX graph was traced from

    model, _, manifest = load_bundle(task_bundle, AutoModelForSequenceClassification, expected_stage="task")
    if manifest.bundle_sha256 != expected_sha256:
        raise BundleError(
            f"{task_bundle}: task bundle sha256 {manifest.bundle_sha256[:12]}... is not the one the exported bundle "
            f"was made from ({expected_sha256[:12]}...); torch_bundle must name the exported model's task bundle"
        )
    torch.set_num_threads(threads)
    wrapped: Any = logits_and_embedding(model)

    def run(encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, pooled = wrapped(torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask))
        return logits.numpy(), pooled.numpy()

    return run
