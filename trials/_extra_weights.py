"""Extra weights: the weights of a model outside its Conv, Linear and Embedding layers that a
simulated width (2, 3, 5-7 bits) must put on its grid as it does the layers', per output unit:

- a ConvTranspose's kernel (its output channels are the weight's axis 1);
- a model's own matrices: 2-D parameters its forward multiplies with directly instead of through
  an ``nn.Linear`` (``x @ self.w``, ``x @ self.w.t()``, ``F.linear(x, self.w)``,
  ``torch.addmm(b, x, self.w)``, ``self.w @ x``, ``torch.einsum("btd,dk->btk", x, self.w)``).
  The exported graph holds each as a MatMul, Gemm or Einsum weight, whose output units are a
  column of ``w`` in ``x @ w``, a row in ``x @ w.t()``, ``F.linear`` and ``w @ x`` (a token
  mixing matrix).

Own matrices are found by one forward pass on the example input (``find_extra_weights``): each
matmul's operands, and each einsum operand contracted on one index and kept on the other, are
matched to a parameter, directly or as its transpose. A matrix read in any other way (a slice,
two orientations) is left as it is, and the export check names it. Extra weights are
fake-quantized during fine-tuning like the layers (``attach``) and baked on the grid after it
(``bake``); the tag ``extra_weights`` names them. int8 and int4 leave them to ONNX Runtime's
quantizers (an Einsum's weight stays float there, and the check says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from searchspace import SIMULATED_BITS
from trials._artifact_weights import opted_out
from trials._quantize import WeightGrid, weight_grid

# The operands of each product that may be a weight: (position in args, axis of its output
# units: 1 = its columns, as in x @ w; 0 = its rows, as in F.linear(x, w) and w @ x).
_MATMUL = ((0, 0), (1, 1))
_OPERANDS = {
    "matmul": _MATMUL,
    "__matmul__": _MATMUL,
    "mm": _MATMUL,
    "__rmatmul__": ((1, 0), (0, 1)),  # self.__rmatmul__(other) is other @ self
    "addmm": ((1, 0), (2, 1)),
    "linear": ((1, 0),),
}
_CONV_TRANSPOSE = nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d
_LAYERS = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear | nn.Embedding | _CONV_TRANSPOSE


@dataclass(frozen=True)
class ExtraWeight:
    """A weight outside the model's layers: its name in ``model.named_parameters()`` and the
    axis of its output units."""

    name: str
    axis: int

    def __post_init__(self) -> None:
        if self.axis not in (0, 1):
            raise ValueError(f"an extra weight's output axis is 0 or 1, not {self.axis!r}")

    def slot(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The module of ``model`` (the trial's or a copy of it) holding the weight, and its
        attribute name there."""
        owner, _, attr = self.name.rpartition(".")
        return model.get_submodule(owner), attr

    def attach(self, model: nn.Module, grid: WeightGrid) -> None:
        """Fake-quantize the weight on ``grid`` per output unit while ``model`` trains."""
        parametrize.register_parametrization(*self.slot(model), _UnitFakeQuant(grid, self.axis))

    def bake(self, model: nn.Module, grid: WeightGrid) -> None:
        """Make the weight a plain parameter again, rounded to ``grid`` per output unit."""
        owner, attr = self.slot(model)
        if parametrize.is_parametrized(owner, attr):
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
        with torch.no_grad():
            weight = getattr(owner, attr)
            weight.copy_(_UnitFakeQuant(grid, self.axis)(weight))


class _UnitFakeQuant(nn.Module):
    """Parametrization: fake quantization on ``grid`` per output unit (the slices along
    ``axis``); the gradient passes straight through."""

    def __init__(self, grid: WeightGrid, axis: int) -> None:
        super().__init__()
        self.grid = grid
        self.axis = axis

    def forward(self, weight: Tensor) -> Tensor:
        if self.axis == 0:
            return self.grid.fake_quantize(weight)
        return self.grid.fake_quantize(weight.movedim(1, 0)).movedim(0, 1)


@dataclass(frozen=True)
class ExtraWeights:
    """The extra weights of a trial's model and the grid a simulated width puts them on (None:
    the artifact's format quantizes them, or leaves them float)."""

    weights: tuple[ExtraWeight, ...] = ()
    grid: WeightGrid | None = None
    bits: int = 32

    @property
    def quantizes(self) -> bool:
        """Whether any weight is put on a grid."""
        return self.grid is not None and bool(self.weights)

    def attach(self, model: nn.Module) -> None:
        """Fake-quantize every extra weight of ``model`` on the grid while it trains."""
        if self.grid is not None:
            for weight in self.weights:
                weight.attach(model, self.grid)

    def bake(self, model: nn.Module) -> None:
        """Every extra weight of ``model`` (the trial's or a copy of it) a plain parameter on
        the grid."""
        if self.grid is not None:
            for weight in self.weights:
                weight.bake(model, self.grid)

    def packed_bytes(self, model: nn.Module) -> int:
        """Analytic size of the weights packed at ``bits`` (each at ``bits / 8`` bytes plus one
        fp32 scale per output unit); 0 when they are not on a grid."""
        if not self.quantizes:
            return 0
        size = 0
        for w in self.weights:
            weight = model.get_parameter(w.name)
            size += math.ceil(weight.numel() * self.bits / 8) + 4 * weight.shape[w.axis]
        return size

    def names(self) -> set[str]:
        """The parameter names of the weights put on a grid."""
        return {w.name for w in self.weights} if self.quantizes else set()

    def tag(self) -> dict[str, str]:
        """``extra_weights``: the weights put on the grid (none: no tag)."""
        if not self.quantizes:
            return {}
        names = ",".join(w.name for w in self.weights)
        return {"extra_weights": f"{names}: fake-quantized on the {self.bits}-bit grid"}


NO_EXTRA_WEIGHTS = ExtraWeights()  # a model without any, or a width that leaves them alone


def extra_weights(
    model: nn.Module, example: torch.Tensor, bits: int, keep_float: Sequence[str] = ()
) -> ExtraWeights:
    """The extra weights of ``model`` that a simulated width ``bits`` puts on its grid (none at
    other widths, and none that ``keep_float`` names)."""
    if bits not in SIMULATED_BITS:
        return ExtraWeights(bits=bits)
    kernels = [
        ExtraWeight(f"{name}.weight", 1)
        for name, m in model.named_modules()
        if isinstance(m, _CONV_TRANSPOSE)
    ]
    found = [*kernels, *find_extra_weights(model, example)]
    kept = tuple(w for w in found if not opted_out(w.name, keep_float))
    return ExtraWeights(kept, weight_grid(bits), bits)


def find_extra_weights(model: nn.Module, example: torch.Tensor) -> list[ExtraWeight]:
    """The model's own matrices: every 2-D parameter of ``model`` outside its layers that one
    forward pass on ``example`` reads as an operand of a matmul (or as an einsum operand kept
    on one index), directly or transposed, in one orientation only."""
    layered = {id(m.weight) for m in model.modules() if isinstance(m, _LAYERS)}
    candidates = {
        id(p): name for name, p in model.named_parameters() if p.dim() == 2 and id(p) not in layered
    }
    if not candidates:
        return []
    spy = _MatmulSpy(candidates)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:  # fork_rng: a forward that draws random numbers leaves the trial's stream alone
        with torch.random.fork_rng(devices=[]), torch.no_grad(), spy:
            model(example.to(device))
    finally:
        model.train(was_training)
    return [ExtraWeight(name, axis) for name, axis in spy.found.items() if axis is not None]


def einsum_axes(equation: str, count: int) -> list[int | None]:
    """For each of an einsum's ``count`` operands, the axis of its output units when it is a
    matrix contracted on one index and kept on the other (``"btd,dk->btk"``: 1 for the second
    operand); None for any other operand."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow:  # implicit output: the indices that appear once, in alphabetical order
        letters = lhs.replace(",", "")
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    axes: list[int | None] = []
    for term in terms[:count]:
        kept = [c in rhs for c in term]
        plain = len(term) == 2 and "." not in term and term[0] != term[1]
        axes.append(kept.index(True) if plain and kept.count(True) == 1 else None)
    return axes + [None] * (count - len(axes))


class _MatmulSpy(TorchFunctionMode):
    """Notes the axis each candidate parameter is read on (None: read in more than one way)."""

    def __init__(self, candidates: dict[int, str]) -> None:
        super().__init__()
        self.candidates = candidates
        self.found: dict[str, int | None] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        for position, axis in _OPERANDS.get(name, ()):
            if len(args) > position:
                self._note(args[position], axis)
        if name == "linear" and "weight" in kwargs:
            self._note(kwargs["weight"], 0)
        elif name == "einsum" and args and isinstance(args[0], str):
            operands = args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
            for operand, kept in zip(operands, einsum_axes(args[0], len(operands)), strict=False):
                if kept is not None:
                    self._note(operand, kept)
        return func(*args, **kwargs)

    def _note(self, operand: Any, axis: int) -> None:
        if not isinstance(operand, torch.Tensor) or operand.dim() != 2:
            return
        if id(operand) in self.candidates:
            self._set(self.candidates[id(operand)], axis)
            return
        base = operand._base
        if base is None or id(base) not in self.candidates:
            return
        name = self.candidates[id(base)]
        whole = operand.storage_offset() == base.storage_offset()
        if whole and operand.shape == base.shape and operand.stride() == base.stride():
            self._set(name, axis)  # the parameter itself, viewed as it is
        elif whole and (operand.shape, operand.stride()) == (base.shape[::-1], base.stride()[::-1]):
            self._set(name, 1 - axis)  # its transpose
        else:
            self._set(name, None)  # a slice or a reshape: no output unit to round per

    def _set(self, name: str, axis: int | None) -> None:
        if name in self.found and self.found[name] != axis:
            axis = None
        self.found[name] = axis
