"""projected_grpo: GRPO with gradient-level interventions against reward hacking.

Owns the version string; never imports a module of its own package (so `import projected_grpo` stays cheap).
"""

__version__ = "0.1.0"
