"""Statistics shared by the fit and compare stages: intervals over seeds, verdicts and multiple-testing levels."""
