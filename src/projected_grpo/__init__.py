"""projected_grpo: GRPO with gradient-level interventions against reward hacking."""

__version__ = "0.1.0"
