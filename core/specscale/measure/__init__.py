"""FFN activations of a run's checkpoints (activations), their covariance spectra (spectra), the metrics of a
spectrum (metrics)."""
