"""specscale: optimizer-induced spectral scaling laws of Transformer FFN representations, as a DVC pipeline.

The library, one sub-package (wing) per pipeline concept; docs/architecture.md lists them and which may import which.
Package __init__ files re-export nothing: import each name from the module that defines it."""
