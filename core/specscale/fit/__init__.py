"""Scaling-law fits: the β fit itself (laws), the fit stage over a study (fit), seeds and optimizer differences
(seed_stats)."""
