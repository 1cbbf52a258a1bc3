"""The allocator of mixed plans: each layer's format under a size budget, greedy by the
predicted loss of accuracy per byte saved.

Input: per layer, the options it may take (format, predicted loss from the measured
sensitivity table, predicted bytes in the artifact); the bytes outside those layers; the target.
Greedy: every layer starts at its least lossy option (fp32); while the prediction is over
the target, the one move (a layer to a cheaper option) with the least added loss per byte saved
is made. A layer has at most three options, so a search over 30 layers costs microseconds.

Why greedy and not a knapsack DP: the DP is exact only for the predicted losses, which are a
proxy (each layer measured alone; interactions ignored) noisier than the gap between the two;
it needs the bytes discretized (millions of them), and greedy by marginal ratio is optimal for
the LP relaxation when each layer's loss-vs-bytes curve is convex, which it is for
fp32 > int8 > int4 on the models seen so far, and within one layer's move of the optimum
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from searchspace import ConfigError


@dataclass(frozen=True)
class LayerOption:
    """One setting a layer may take: its ``format``, the predicted ``loss`` (sensitivity) and
    the predicted ``nbytes`` of its weights in the artifact."""

    format: str
    loss: float
    nbytes: int


@dataclass(frozen=True)
class LayerTable:
    """The options of one layer (by module name)."""

    name: str
    options: tuple[LayerOption, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ConfigError(
                field="options",
                value=self.name,
                rule="each layer has at least one option",
                fix="give every layer its fp32 option",
                source="LayerTable",
            )


@dataclass(frozen=True)
class Allocation:
    """The allocator's answer: each layer's format, the predicted bytes of the artifact and
    the summed predicted loss; ``reached`` is False when even the cheapest options miss the
    target (the plan is then the cheapest there is)."""

    formats: Mapping[str, str]
    predicted_bytes: int
    predicted_loss: float
    reached: bool
    moves: tuple[str, ...] = field(default=())


def allocate(tables: Sequence[LayerTable], *, fixed_bytes: int, target_bytes: float) -> Allocation:
    """Greedy allocation (see the module docstring) of ``tables`` so that ``fixed_bytes`` plus
    the layers' bytes is at most ``target_bytes``."""
    _check_target(target_bytes, source="allocate")
    # Start lossless (fp32; the smaller of equally lossless options), then only cheaper moves:
    # a small layer whose int8 file is larger than its fp32 one (scales, QDQ nodes) stays fp32.
    current = {t.name: min(t.options, key=lambda o: (o.loss, o.nbytes)) for t in tables}
    total = fixed_bytes + sum(o.nbytes for o in current.values())
    moves: list[str] = []
    while total > target_bytes:
        best: tuple[float, int, str, LayerOption] | None = None
        for table in tables:
            now = current[table.name]
            for option in table.options:
                saved = now.nbytes - option.nbytes
                if saved <= 0:
                    continue
                ratio = (option.loss - now.loss) / saved
                key = (ratio, -saved, table.name, option)
                if best is None or key[:3] < best[:3]:
                    best = key
        if best is None:
            break
        _, saved_neg, name, option = best
        current[name] = option
        total += saved_neg
        moves.append(f"{name}->{option.format}")
    return Allocation(
        formats={name: option.format for name, option in current.items()},
        predicted_bytes=int(total),
        predicted_loss=float(sum(o.loss for o in current.values())),
        reached=total <= target_bytes,
        moves=tuple(moves),
    )


@dataclass(frozen=True)
class Choice:
    """One decision of a joint allocation: a layer's format or a group's kept width, ``name``d,
    with its ``options`` as (value, predicted loss) pairs."""

    name: str
    options: tuple[tuple[object, float], ...]


@dataclass(frozen=True)
class JointAllocation:
    """The joint allocator's answer: each choice's value, the predicted cost (bytes or
    milliseconds, as the cost function) and summed loss, whether the target is reached, and
    the moves made in order."""

    picks: Mapping[str, object]
    predicted: float
    predicted_loss: float
    reached: bool
    moves: tuple[str, ...] = field(default=())


def allocate_joint(
    choices: Sequence[Choice],
    cost: Callable[[Mapping[str, object]], float],
    *,
    target: float,
) -> JointAllocation:
    """The greedy of ``allocate`` over choices whose costs do not add up layer by layer (a
    group's kept width shrinks the next layer's inputs too, whatever that layer's format; two
    neighbouring int8 layers share a quantization): ``cost`` predicts the cost (bytes or
    milliseconds) of a whole assignment, each move is priced by the loss it adds per unit of
    cost it saves in that prediction."""
    _check_target(target, source="allocate_joint")
    index = {c.name: min(range(len(c.options)), key=lambda i: c.options[i][1]) for c in choices}

    def values(state: Mapping[str, int]) -> dict[str, object]:
        return {c.name: c.options[state[c.name]][0] for c in choices}

    total = cost(values(index))
    moves: list[str] = []
    while total > target:
        best: tuple[float, float, str, int, float] | None = None
        for choice in choices:
            now = index[choice.name]
            for i, (_value, loss) in enumerate(choice.options):
                if i == now:
                    continue
                then = cost(values({**index, choice.name: i}))
                saved = total - then
                if saved <= 0:
                    continue
                key = ((loss - choice.options[now][1]) / saved, -saved, choice.name, i, then)
                if best is None or key[:3] < best[:3]:
                    best = key
        if best is None:
            break
        _, _, name, i, total = best
        index[name] = i
        moves.append(f"{name}->{values(index)[name]}")
    picked = values(index)
    loss = sum(c.options[index[c.name]][1] for c in choices)
    return JointAllocation(
        picks=picked,
        predicted=float(total),
        predicted_loss=float(loss),
        reached=total <= target,
        moves=tuple(moves),
    )


def _check_target(target: float, *, source: str) -> None:
    if target <= 0:
        raise ConfigError(
            field="target",
            value=target,
            rule="the budget's target must be positive",
            fix="pass budget x the dense artifact's bytes or latency",
            source=source,
        )
