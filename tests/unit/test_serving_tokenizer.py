"""Train/serve skew: serving tokenises and pads exactly as training and the export runtime do."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving_fixtures import ServingBundles, serving_bundles
from tl_platform.export.runtime import OnnxClassifier, encode
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import load_variant, pad_batch
from tl_platform.training.long_text import encode_texts

__all__ = ["serving_bundles"]  # the fixture, imported for pytest

TEXTS = ["Great phone, works well.", "the battery died after a day", "zxqv unknownish wordz", "ok"]


def test_training_and_serving_tokenise_identically(serving_bundles: ServingBundles) -> None:
    from transformers import AutoTokenizer

    from tl_platform.training.text_data import TokenizedTexts

    max_length = json.loads((serving_bundles.exported / "serving.json").read_text())["max_length"]
    training = TokenizedTexts(AutoTokenizer.from_pretrained(serving_bundles.task / "tokenizer"), [*TEXTS, "x " * 500], max_length)
    model = load_variant(VariantSpec("1", serving_bundles.exported, "int8"))
    served = model.tokenize([*TEXTS, "x " * 500])
    assert [list(t.input_ids) for t in served] == training.input_ids
    assert served[-1].length == max_length  # truncated exactly where training truncates
    assert served[2].unknown_share > 0 and served[0].unknown_share == 0


def test_serving_padding_matches_the_export_runtime_and_outputs_match(serving_bundles: ServingBundles) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(serving_bundles.exported / "tokenizer")
    model = load_variant(VariantSpec("1", serving_bundles.exported, "fp32"))
    reference = encode(tokenizer, TEXTS, model.max_length)
    padded = pad_batch([t.input_ids for t in model.tokenize(TEXTS)], tokenizer.pad_token_id, tokenizer.padding_side)
    np.testing.assert_array_equal(padded.input_ids, reference.input_ids)
    np.testing.assert_array_equal(padded.attention_mask, reference.attention_mask)
    np.testing.assert_allclose([t.unknown_share for t in model.tokenize(TEXTS)], reference.unknown_share)
    logits, embeddings = model.infer([t.input_ids for t in model.tokenize(TEXTS)])
    ref_logits, ref_embeddings = OnnxClassifier(serving_bundles.exported / "model_fp32.onnx").run(reference)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6)
    assert embeddings.shape == ref_embeddings.shape == (4, 32)


def _tokenizers_under_test(serving_bundles: ServingBundles) -> list[object]:
    from transformers import AutoTokenizer

    from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source

    return [
        AutoTokenizer.from_pretrained(serving_bundles.exported / "tokenizer"),  # the tiny test vocabulary
        load_tokenizer(resolve_source(FoundationSource())),  # the real MiniLM WordPiece tokenizer
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.one_of(
            st.text(min_size=0, max_size=400),
            # special-token strings inside text, accents, combining marks, emoji, control characters, long runs
            st.sampled_from(["[CLS] a [SEP] b", "[MASK]", "[PAD] [UNK] x", "café naïve", "e\u0301", "👍🏽 great",
                             "\x00\t\r\n", "word " * 300, "ünïcödé" * 50]),
        ),
        min_size=1, max_size=4,
    ),
    max_length=st.sampled_from([8, 64, 256]),
)
def test_serving_tokenizer_gives_the_training_ids_on_any_text(
    serving_bundles: ServingBundles, texts: list[str], max_length: int
) -> None:
    from tl_platform.serving.model import ServingTokenizer

    for tokenizer in _TOKENIZERS.setdefault("loaded", _tokenizers_under_test(serving_bundles)):
        expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # type: ignore[operator]
        served = ServingTokenizer(tokenizer, max_length)(texts)  # type: ignore[arg-type]
        assert [list(t.input_ids) for t in served] == expected
        assert all(t.length <= max_length for t in served)


_TOKENIZERS: dict[str, list[object]] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.one_of(
            st.text(min_size=0, max_size=400),
            st.sampled_from(["[CLS] a [SEP] b " * 20, "[MASK]", "café naïve " * 40, "👍🏽 great " * 30, "\x00\t\r\n",
                             "word " * 300, "ünïcödé" * 50]),
        ),
        min_size=1, max_size=4,
    ),
    max_length=st.sampled_from([32, 64]),
)
def test_head_tail_serving_gives_the_training_ids_on_any_text(
    serving_bundles: ServingBundles, texts: list[str], max_length: int
) -> None:
    from tl_platform.serving.model import ServingTokenizer
    from tl_platform.training.text_data import TokenizedTexts

    for tokenizer in _TOKENIZERS.setdefault("loaded", _tokenizers_under_test(serving_bundles)):
        expected = TokenizedTexts(tokenizer, texts, max_length, truncation="head_tail").input_ids  # type: ignore[arg-type]
        served = ServingTokenizer(tokenizer, max_length, "head_tail")(texts)  # type: ignore[arg-type]
        assert [list(t.input_ids) for t in served] == expected
        assert all(t.length <= max_length for t in served)


def test_a_tokenizer_without_a_rust_backend_goes_through_the_wrapper(serving_bundles: ServingBundles) -> None:
    from transformers import AutoTokenizer

    from tl_platform.serving.model import ServingTokenizer

    fast = AutoTokenizer.from_pretrained(serving_bundles.exported / "tokenizer")

    class WrapperOnly:  # what a slow (pure Python) tokenizer offers: no backend_tokenizer
        unk_token_id = fast.unk_token_id

        def __call__(self, texts: list[str], **kwargs: object) -> object:
            return fast(texts, **kwargs)

        def num_special_tokens_to_add(self, pair: bool = False) -> int:
            return int(fast.num_special_tokens_to_add(pair=pair))

    texts = [*TEXTS, "word " * 40]
    served = ServingTokenizer(WrapperOnly(), 16)(texts)  # type: ignore[arg-type]
    assert [list(t.input_ids) for t in served] == fast(texts, truncation=True, max_length=16)["input_ids"]
    assert served[-1].length == 16
    ends = [*texts, "good " * 20 + "bad " * 20]
    head_tail = ServingTokenizer(WrapperOnly(), 16, "head_tail")(ends)  # type: ignore[arg-type]
    assert [list(t.input_ids) for t in head_tail] == encode_texts(fast, ends, 16, "head_tail")["input_ids"]
    assert fast.convert_tokens_to_ids("bad") in head_tail[-1].input_ids  # the end survives
