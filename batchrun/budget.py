"""The spend cap (`budget.max_usd`), held by reservation so that requests in flight count."""

from __future__ import annotations


class Budget:
    """A spend cap enforced by reservation: each send reserves its worst-case cost (prompt + max
    output tokens at the model's price) and settles with the real cost when the reply comes."""

    def __init__(self, max_usd: float, spent_before: float = 0.0) -> None:
        self.max_usd = max_usd
        self.spent_before = spent_before
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, worst: float) -> bool:
        if self.spent_before + self.spent + self.reserved + worst > self.max_usd + 1e-12:
            return False
        self.reserved += worst
        return True

    async def acquire(self, worst: float) -> bool:
        """What the engine calls: here `reserve`; a cluster's budget (leases.LeasedBudget) may ask its book."""
        return self.reserve(worst)

    def settle(self, worst: float, actual: float) -> None:
        self.reserved -= worst
        self.spent += actual

    def message(self) -> str:
        total = self.spent_before + self.spent + self.reserved
        return (
            f"budget.max_usd = ${self.max_usd:,.4f} reached: ${total:,.4f} spent or in flight "
            f"(${self.spent_before:,.4f} in earlier runs). Finished rows are kept; raise budget.max_usd "
            "and run the job again to continue."
        )
