"""Where runs live: run directories and their atomic commit (runs), what a finished run holds (integrity), which code
made it (fingerprint), remotes, DVC's torn files (recover)."""
