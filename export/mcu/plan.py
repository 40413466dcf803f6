"""Static memory plan of the generated C: one activation buffer, reused by liveness.

Every activation tensor of the :class:`~export.mcu.lower.Program` (an
alias -- RESHAPE -- shares its source's bytes) and every kernel's scratch
lives from the layer that writes it to the last layer that reads it (the
model output to the end, the model input from the start). Elementwise
layers may write over an input that dies there (``in_place``). Placement
is greedy by size, largest first, at the lowest 16-byte-aligned offset
that overlaps no tensor alive at the same time (the strategy of TFLite
Micro's greedy planner), or in the order the layers write them, or
longest-lived first, or one of a fixed set of variations of the first,
whichever gives the smallest buffer; the buffer is as large as the highest
end.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Dict, List, Optional, Tuple

__all__ = ["Block", "MemoryPlan", "plan_memory", "ALIGN"]

ALIGN = 16


@dataclasses.dataclass
class Block:
    key: str            # "t<index>" for a tensor, "s<layer>" for a scratch buffer
    size: int
    first: int          # layer index of the write (-1: before the first layer)
    last: int           # layer index of the last read
    offset: int = -1


@dataclasses.dataclass
class MemoryPlan:
    blocks: Dict[str, Block]
    arena_bytes: int
    shared: Dict[str, str]   # in-place outputs -> the block whose bytes they take

    def offset(self, key: str) -> int:
        while key in self.shared:
            key = self.shared[key]
        return self.blocks[key].offset

    def peak_live_bytes(self) -> int:
        """The most bytes alive at once (a lower bound of any plan)."""
        ends = [b.last for b in self.blocks.values()]
        best = 0
        for t in range(-1, max(ends, default=0) + 1):
            best = max(best, sum(b.size for b in self.blocks.values() if b.first <= t <= b.last))
        return best


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(program, scratch: Dict[int, int], in_place: Dict[int, int],
                sizes: Optional[Dict[int, int]] = None) -> MemoryPlan:
    """Plans ``program``'s tensors and the per-layer ``scratch`` bytes.

    Args:
      program: an :class:`export.mcu.lower.Program`.
      scratch: ``{layer index: bytes}`` of kernel scratch buffers.
      in_place: ``{layer index: input tensor}``: the layer may write its
        output over that input when the input's life ends there.
      sizes: ``{tensor: bytes}`` of tensors stored in another form than
        their int8 values (a spike stream), else their ``nbytes``.
    """
    sizes = sizes or {}
    n = len(program.layers)
    first: Dict[int, int] = {}
    last: Dict[int, int] = {}
    root = program.root
    first[root(program.input)] = -1
    last[root(program.input)] = -1
    for layer in program.layers:
        for t in layer.outputs:
            first.setdefault(root(t), layer.index)
            last.setdefault(root(t), layer.index)
        for t in layer.inputs:
            r = root(t)
            last[r] = max(last.get(r, -1), layer.index)
    last[root(program.output)] = n
    shared: Dict[str, str] = {}
    blocks: Dict[str, Block] = {}
    for t, f in first.items():
        blocks[f"t{t}"] = Block(f"t{t}", int(sizes.get(t, program.tensors[t].nbytes)), f, last[t])
    for layer in program.layers:
        t_in = in_place.get(layer.index)
        if t_in is None:
            continue
        r_in, r_out = root(t_in), root(layer.outputs[0])
        b_in, b_out = blocks.get(f"t{r_in}"), blocks.get(f"t{r_out}")
        if (b_in is not None and b_out is not None and b_in.last == layer.index and b_in.size >= b_out.size
                and r_in != root(program.input) and f"t{r_in}" not in shared):
            b_in.last = b_out.last   # the input's bytes live on as the output
            shared[f"t{r_out}"] = f"t{r_in}"
            del blocks[f"t{r_out}"]
    for index, size in scratch.items():
        if size > 0:
            blocks[f"s{index}"] = Block(f"s{index}", int(size), index, index)
    best = None
    rng = random.Random(0)
    orders = [sorted(blocks.values(), key=order) for order in ORDERS]
    for _ in range(SHUFFLES):   # and the largest-first order with neighbours swapped at random
        order = list(orders[0])
        for _ in range(len(order)):
            i = rng.randrange(max(len(order) - 1, 1))
            order[i:i + 2] = order[i:i + 2][::-1]
        orders.append(order)
    for order in orders:
        offsets = _place(order)
        arena = _align(max((offsets[k] + blocks[k].size for k in offsets), default=0))
        if best is None or arena < best[0]:
            best = (arena, offsets)
    for key, offset in best[1].items():
        blocks[key].offset = offset
    return MemoryPlan(blocks, best[0], shared)


#: More orders tried (deterministic: a seeded generator).
SHUFFLES = 200
#: Orders in which :func:`plan_memory` places the blocks (the smallest buffer
#: wins; ties: the first): largest first (TFLite Micro's greedy planner), in
#: the order the layers write them, longest-lived first.
ORDERS = (lambda b: (-b.size, b.first, b.key), lambda b: (b.first, -b.size, b.key),
          lambda b: (b.first - b.last, -b.size, b.key))


def _place(order: List[Block]) -> Dict[str, int]:
    """Each block at the lowest aligned offset free of the blocks placed
    before it that are alive at the same time."""
    placed: List[Tuple[int, int, int, int]] = []   # (offset, size, first, last)
    offsets = {}
    for block in order:
        live = sorted(o for o in placed if o[2] <= block.last and block.first <= o[3])
        offset = 0
        for other_offset, other_size, _, _ in live:
            if offset + block.size <= other_offset:
                break
            offset = max(offset, _align(other_offset + other_size))
        offsets[block.key] = offset
        placed.append((offset, block.size, block.first, block.last))
    return offsets
