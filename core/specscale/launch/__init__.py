"""Running a fan-out stage's missing runs through submitit (debug, local, slurm), with job records and re-attach."""
