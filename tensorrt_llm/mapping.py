"""Which slice of the model a rank holds: tensor parallel (split inside layers) and pipeline parallel
(split across layers). Ranks are numbered tp-major inside a pipeline stage: rank = pp_rank * tp + tp_rank."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Mapping:
    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.pp_size < 1:
            raise ValueError(f"tp_size and pp_size must be >= 1, got tp={self.tp_size} pp={self.pp_size}")
        if self.world_size != self.tp_size * self.pp_size:
            raise ValueError(
                f"world_size ({self.world_size}) must equal tp_size * pp_size "
                f"({self.tp_size} * {self.pp_size} = {self.tp_size * self.pp_size})"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    def pp_layers(self, num_layers: int) -> range:
        """Layers held by this rank's pipeline stage (contiguous, earlier stages take the remainder)."""
        per, extra = divmod(num_layers, self.pp_size)
        start = self.pp_rank * per + min(self.pp_rank, extra)
        return range(start, start + per + (1 if self.pp_rank < extra else 0))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("rank")
        return d
