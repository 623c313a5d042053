"""The masked-language-model loss, scored on the masked positions only.

``BertForMaskedLM`` (Transformers 5.x) runs every position through the MLM head, a dense transform and a
projection onto the whole vocabulary (30,522 x 384 for MiniLM), and then ignores all but the ~15% of positions
that carry a label. That projection costs about as much as the whole 6-layer encoder. Here the encoder runs as
usual, the hidden states of the labelled positions (label != -100) are gathered, and only those go through the
head. The mean cross-entropy is the same number: the same terms, summed over the same positions.

Transformers has this built in for ModernBERT only (``ModernBertConfig.sparse_prediction``); BERT, RoBERTa and
the rest have no such switch, so the loss is computed here, from the model's own encoder and head modules. A
model qualifies when it is exactly an encoder plus one head module holding the output embeddings, and
``resolve_mlm_loss`` checks that the two losses agree on a real batch before relying on it; any other model
keeps its own (full-vocabulary) forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from transformers import PreTrainedModel, Trainer

if TYPE_CHECKING:
    import torch

MlmLoss = Literal["masked_only", "full_vocabulary"]
MLM_LOSSES: tuple[MlmLoss, ...] = ("masked_only", "full_vocabulary")
IGNORE_INDEX = -100  # the collator's label for positions that are not scored
AGREEMENT_TOLERANCE = 1e-4  # relative: the two losses of one batch differ by float rounding only


def mlm_head(model: PreTrainedModel) -> torch.nn.Module | None:
    """The module that maps hidden states to vocabulary logits, when the model is just encoder + that head.

    None when the model has other top-level modules (DistilBERT's separate transform and projector, ELECTRA's
    two generator modules): its forward does more than ``head(encoder(x))`` and only it knows what.
    """
    base = model.base_model
    output = model.get_output_embeddings()
    if output is None or base is model:
        return None
    others = [module for _, module in model.named_children() if module is not base]
    if len(others) != 1:
        return None
    (head,) = others
    return head if any(module is output for module in head.modules()) else None


def masked_only_loss(model: PreTrainedModel, head: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100, scoring only those positions.

    A batch without one masked position gives a zero loss that still depends on the weights (the model's own
    forward gives NaN there, which would poison the weights).
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    hidden = model.base_model(**inputs, return_dict=True).last_hidden_state
    selected = labels != IGNORE_INDEX
    if not bool(selected.any()):
        return hidden.sum() * 0.0
    logits = head(hidden[selected])
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels[selected])


def full_vocabulary_loss(model: PreTrainedModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's own MLM loss: every position scored against the whole vocabulary."""
    loss = model(**batch).loss
    assert loss is not None, "an MLM forward with labels returns a loss"
    return loss


def mlm_loss(model: PreTrainedModel, batch: Mapping[str, torch.Tensor], how: MlmLoss) -> torch.Tensor:
    """The MLM loss of one batch by the chosen path (``resolve_mlm_loss`` says which one a model supports)."""
    if how == "masked_only":
        head = mlm_head(model)
        if head is None:
            raise ValueError(f"{type(model).__name__} is not an encoder plus one MLM head; use 'full_vocabulary'")
        return masked_only_loss(model, head, batch)
    return full_vocabulary_loss(model, batch)


def resolve_mlm_loss(model: PreTrainedModel, batch: Mapping[str, torch.Tensor], requested: MlmLoss) -> MlmLoss:
    """``masked_only`` when requested, the model qualifies, and both paths give the same loss on ``batch``.

    The check runs once, in eval mode (no dropout), on a batch the caller masked (the held-out text's first).
    """
    import torch

    if requested not in MLM_LOSSES:
        raise ValueError(f"mlm_loss must be one of {list(MLM_LOSSES)}, got {requested!r}")
    head = mlm_head(model)
    if requested == "full_vocabulary" or head is None:
        return "full_vocabulary"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    moved = {name: value.to(device) for name, value in batch.items()}
    with torch.inference_mode():
        sparse = float(masked_only_loss(model, head, moved))
        full = float(full_vocabulary_loss(model, moved))
    model.train(was_training)
    agree = abs(sparse - full) <= AGREEMENT_TOLERANCE * max(1.0, abs(full))
    return "masked_only" if agree else "full_vocabulary"


class MaskedOnlyMLMTrainer(Trainer):
    """A Trainer whose training loss scores the masked positions only (see the module docstring).

    The loss is the per-batch mean, as ``BertForMaskedLM`` returns it, so the Trainer is told to divide it by
    the number of gradient-accumulation steps (``loss_is_scaled_for_ga = False``); with one step, as domain
    adaptation trains, the update is the full-vocabulary path's. A model that the Trainer wrapped
    (DistributedDataParallel, ``torch.compile``) must be called through its wrapper, so it keeps the model's own
    forward and the Trainer's own scaling.
    """

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        unwrapped = self.accelerator.unwrap_model(model)
        head = mlm_head(unwrapped) if unwrapped is model and isinstance(unwrapped, PreTrainedModel) else None
        if return_outputs or head is None or "labels" not in inputs:
            self.loss_is_scaled_for_ga = None  # the Trainer decides, as for any model
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.loss_is_scaled_for_ga = False
        return masked_only_loss(unwrapped, head, inputs)
