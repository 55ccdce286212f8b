"""Decision-level fusion: merge each modality's class prediction into one distribution."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_features,
    check_inputs,
    check_positive,
    check_presence,
    check_size,
    check_tensor,
    owner_name,
    presence_matrix,
)
from ..functional.fusion.decision import DECISION_STRATEGIES, decision_fusion

__all__ = ["DecisionFusion"]


def _per_modality(
    value: float | Mapping[str, float] | None, names: Sequence[str], *, owner: object, arg: str,
    default: float,
) -> list[float]:
    if value is None:
        return [default] * len(names)
    if isinstance(value, Mapping):
        if set(value) != set(names):
            raise ValueError(
                f"{owner_name(owner)}: expected `{arg}` to name exactly the modalities "
                f"{list(names)}, got {list(value)}."
            )
        out = [value[m] for m in names]
    else:
        out = [value] * len(names)  # type: ignore[list-item]
    for m, v in zip(names, out):
        check_positive(v, owner=owner, arg=f"{arg}[{m!r}]")
    return [float(v) for v in out]


class DecisionFusion(nn.Module):
    """Fuse the class predictions of separate per-modality models (late fusion).

    The source document's rule, ``0.6 * p_text + 0.4 * p_audio`` on one binary sample,
    generalised to batches, C classes and M modalities, plus the other common merges:

    - ``"weighted"``: weighted mean of the distributions (weights renormalised over the
      modalities present in each sample);
    - ``"product"``: product of experts, renormalised, in log space (weights act as exponents);
    - ``"soft_vote"``: plain mean of the distributions (ignores ``weights``);
    - ``"hard_vote"``: majority of the arg-max votes, ties broken by the weighted mean (the
      output is ``(votes + wmean/2) / (n + 1/2)``, see
      :func:`mmfuse.functional.fusion.decision.hard_vote`);
    - ``"max"``: per-class maximum over the modalities, renormalised.

    With ``learnable=True`` the weights are ``softmax`` over a parameter vector initialised at
    ``log(weights)``, so they can be trained end to end. With ``inputs="logits"`` each modality's
    logits are calibrated by a temperature, ``softmax(logits / T_m)``, learned when
    ``learn_temperature=True``.

    Absent modalities drop out and the others renormalise; a sample with no modality present
    gets the uniform distribution ``1/C``.

    Args:
        modalities: Names of the modalities, in the order the module uses.
        num_classes: Number of classes C.
        strategy: One of ``"weighted"``, ``"product"``, ``"soft_vote"``, ``"hard_vote"``,
            ``"max"``.
        weights: Positive weight per modality (a mapping naming every modality); None = equal.
            They need not sum to 1: only their ratios matter.
        learnable: Learn the weights (``"weighted"``, ``"product"``, ``"hard_vote"`` only).
        inputs: ``"probs"`` (rows sum to 1) or ``"logits"``.
        temperature: Temperature per modality for ``inputs="logits"`` (a number or a mapping).
        learn_temperature: Learn the temperatures (log-parametrised, so they stay positive).

    Shape:
        - predictions[m]: (B, C); present[m]: (B,) bool, True = observed
        - output: (B, C), rows summing to 1

    Example:
        >>> f = DecisionFusion(["text", "audio"], 2, weights={"text": 0.6, "audio": 0.4})
        >>> p = f({"text": torch.tensor([[0.8, 0.2]]), "audio": torch.tensor([[0.3, 0.7]])})
        >>> p
        tensor([[0.6000, 0.4000]])
        >>> f.decide(p)
        tensor([0])
    """

    fixed_weights: Tensor
    fixed_log_temperature: Tensor

    def __init__(
        self,
        modalities: Sequence[str],
        num_classes: int,
        *,
        strategy: str = "weighted",
        weights: Mapping[str, float] | None = None,
        learnable: bool = False,
        inputs: str = "probs",
        temperature: float | Mapping[str, float] = 1.0,
        learn_temperature: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence) or not (
            modalities
        ):
            raise TypeError(
                f"DecisionFusion: expected `modalities` to be a non-empty sequence of names, "
                f"got {modalities!r}."
            )
        for m in modalities:
            if not isinstance(m, str) or not m:
                raise TypeError(
                    f"DecisionFusion: modality names in `modalities` must be non-empty str, "
                    f"got {m!r}."
                )
        names = list(modalities)
        if len(set(names)) != len(names):
            raise ValueError(f"DecisionFusion: expected distinct `modalities`, got {names}.")
        check_size(num_classes, owner=self, arg="num_classes")
        if num_classes < 2:
            raise ValueError(
                f"DecisionFusion: expected `num_classes` to be an int >= 2, got {num_classes!r}."
            )
        check_choice(strategy, DECISION_STRATEGIES, owner=self, arg="strategy")
        check_choice(inputs, ("probs", "logits"), owner=self, arg="inputs")
        if learnable and strategy in ("soft_vote", "max"):
            raise ValueError(
                f"DecisionFusion: `learnable=True` needs a strategy that uses weights, expected "
                f"one of ['weighted', 'product', 'hard_vote'], got {strategy!r}."
            )
        if learn_temperature and inputs != "logits":
            raise ValueError(
                "DecisionFusion: `learn_temperature=True` calibrates logits, expected "
                f"inputs='logits', got {inputs!r}."
            )
        self.modalities = names
        self.dims = {m: num_classes for m in names}  # every prediction is (B, C)
        self.num_classes = self.out_dim = num_classes
        self.strategy, self.inputs = strategy, inputs
        self.learnable, self.learn_temperature = learnable, learn_temperature
        self._init_weights = _per_modality(weights, names, owner=self, arg="weights", default=1.0)
        self._init_temp = _per_modality(temperature, names, owner=self, arg="temperature",
                                        default=1.0)
        if learnable:
            self.weight_logits = nn.Parameter(torch.empty(len(names), **dd))
        else:
            self.register_buffer("fixed_weights", torch.empty(len(names), **dd))
        if learn_temperature:
            self.log_temperature = nn.Parameter(torch.empty(len(names), **dd))
        else:
            self.register_buffer("fixed_log_temperature", torch.empty(len(names), **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w = torch.tensor(self._init_weights, dtype=torch.float64)
        w = w / w.sum()
        t = torch.tensor([math.log(v) for v in self._init_temp], dtype=torch.float64)
        with torch.no_grad():
            if self.learnable:
                self.weight_logits.copy_(w.log())
            else:
                self.fixed_weights.copy_(w)
            if self.learn_temperature:
                self.log_temperature.copy_(t)
            else:
                self.fixed_log_temperature.copy_(t)

    def weights(self) -> Tensor:
        """The current (M,) weights, summing to 1 (before renormalising over presence)."""
        if self.learnable:
            return torch.softmax(self.weight_logits.float(), dim=0).to(self.weight_logits.dtype)
        return self.fixed_weights

    def temperature(self) -> Tensor:
        """The current (M,) per-modality temperatures applied to logits."""
        log_t = self.log_temperature if self.learn_temperature else self.fixed_log_temperature
        return log_t.exp()

    def forward(
        self, predictions: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        batch = check_features(predictions, self.dims, owner=self, arg="predictions",
                               layout="B C", allow_missing=True)
        ref = next(predictions[m] for m in self.modalities if m in predictions)
        check_presence(present, self.dims, batch, owner=self, device=ref.device)
        check_inputs(self, {"predictions": predictions}, dtype=False)  # computes in any dtype
        observed = presence_matrix(predictions, present, self.modalities, batch, ref.device)
        zero = ref.new_zeros(())
        stacked = torch.stack(
            [predictions[m] if m in predictions else zero.expand(batch, self.num_classes)
             for m in self.modalities], dim=1)  # (B, M, C)
        temperature = self.temperature() if self.inputs == "logits" else None
        return decision_fusion(stacked, observed, self.weights(), strategy=self.strategy,
                               inputs=self.inputs, temperature=temperature)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    @staticmethod
    def decide(probs: Tensor) -> Tensor:
        """(B,) labels: the arg-max class of fused (B, C) probabilities.

        For two classes this is the document's threshold rule ``p[1] > 0.5`` except at an exact
        tie, which goes to class 0.
        """
        check_tensor(probs, "B C", owner="DecisionFusion.decide", arg="probs")
        return probs.argmax(dim=-1)

    def extra_repr(self) -> str:
        return (f"modalities={self.modalities}, num_classes={self.num_classes}, "
                f"strategy={self.strategy!r}, inputs={self.inputs!r}, learnable={self.learnable}")
