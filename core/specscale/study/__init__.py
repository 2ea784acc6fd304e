"""The study: the typed spec (presets ← params.yaml), sweep and ablation arms expanded into run specs, every run's
key (plan), run labels."""
