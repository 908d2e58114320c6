"""Where an objective's random numbers come from: the one randomness source that the trainer
seeds and the objectives draw from (neither imports the other for it).
"""

from __future__ import annotations

import torch


class Noise:
    """Where the objective's random numbers come from.

    ``Noise()`` draws from torch's global RNG. ``Noise(generator, rank, world_size)`` draws each
    tensor for the *global* batch (``world_size`` x the local rows) from a generator seeded alike
    on every rank and keeps rows ``rank::world_size``, the rows this rank holds (the data loader
    shards the same way). N processes then mask and sample exactly as one process would with the
    whole batch; with one process it costs nothing extra.
    """

    def __init__(self, generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1):
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def _global(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] * self.world_size, *shape[1:])

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.world_size == 1 else t[self.rank :: self.world_size]

    def rand(self, shape: tuple[int, ...], device) -> torch.Tensor:
        return self._local(torch.rand(self._global(shape), generator=self.generator, device=device))

    def randint(self, high: int, shape: tuple[int, ...], device) -> torch.Tensor:
        return self._local(torch.randint(0, high, self._global(shape), generator=self.generator, device=device))


GLOBAL_RNG = Noise()


class DrawnNoise(Noise):
    """Random tensors drawn beforehand (:func:`draw_ahead`), handed out in the order asked for."""

    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        self._tensors = list(tensors)

    def _next(self, shape: tuple[int, ...]) -> torch.Tensor:
        t = self._tensors.pop(0)
        if tuple(t.shape) != tuple(shape):  # the objective asked in another order than planned
            raise RuntimeError(f"drawn-ahead noise of shape {tuple(t.shape)} asked for as {tuple(shape)}")
        return t

    def rand(self, shape: tuple[int, ...], device) -> torch.Tensor:
        return self._next(shape)

    def randint(self, high: int, shape: tuple[int, ...], device) -> torch.Tensor:
        return self._next(shape)


_compiler_disable = getattr(torch.compiler, "disable", None) or torch._dynamo.disable


@_compiler_disable
def draw_ahead(noise: Noise, plan: list[tuple[str, tuple[int, ...], int]], device) -> DrawnNoise:
    """Draw ``plan`` (``("rand" | "randint", shape, high)``, in order) from ``noise`` now.

    torch.compile cannot trace a draw from an explicit ``torch.Generator``: each is a graph break.
    Drawing a step's numbers first, outside the graph and in the order the objective asks for
    them, keeps the objective one graph and gives a compiled step exactly an eager step's numbers.
    """
    return DrawnNoise([noise.rand(shape, device) if kind == "rand" else noise.randint(high, shape, device)
                       for kind, shape, high in plan])
