"""The GPT of the study, and what building and checkpointing one needs."""
