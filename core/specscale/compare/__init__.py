"""Comparisons across groups of runs, read from the fit stage's tables: the compare stage (compare), its computations
(comparisons), figure data, the paper's numbers."""
