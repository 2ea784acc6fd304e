"""Optimizers of the study: AdamW (torch), Muon, NorMuon, Dion for block matrices, Lion for the rest."""

from .combined import CombinedOptimizer
from .dion import Dion, dion_rank, initial_q
from .defaults import default_hparams, parse_optimizer_name
from .factory import ROLES, build_optimizer, complete_hparams, roles_from_names
from .lion import Lion
from .matrix_base import SCALE_RULES, MatrixOptimizer, shape_scale
from .muon import Muon
from .newton_schulz import JORDAN_COEFFS, PAPER_COEFFS, coefficient_schedule, orthogonalize
from .normuon import NorMuon

__all__ = [
    "CombinedOptimizer",
    "Dion",
    "JORDAN_COEFFS",
    "Lion",
    "MatrixOptimizer",
    "Muon",
    "NorMuon",
    "PAPER_COEFFS",
    "ROLES",
    "SCALE_RULES",
    "build_optimizer",
    "coefficient_schedule",
    "complete_hparams",
    "default_hparams",
    "dion_rank",
    "initial_q",
    "orthogonalize",
    "parse_optimizer_name",
    "roles_from_names",
    "shape_scale",
]
