"""tops: Thinking-Optimal Scaling as a data loop (tag model -> multi-depth sampling ->
verify -> shortest-correct selection -> step masking -> SFT/DPO -> eval)."""

__version__ = "0.1.0"
