"""Hints for whoever typed a wrong name: the one spelling of "did you mean" (spelling). No specscale imports, so every
wing that checks a name may use it."""
