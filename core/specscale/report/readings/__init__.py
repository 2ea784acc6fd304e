"""Sentences of the report computed from the tables they describe: primitives, fit readings, comparison readings."""
