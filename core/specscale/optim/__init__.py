"""Optimizers of the study: AdamW (torch), Muon, NorMuon, Dion for block matrices, Lion for the rest; their defaults
(defaults) and the factory that builds one for a model (factory). Import each name from the module that defines it."""
