"""Commands beside the pipeline: what plan and status print (status), measuring a study's cost on this machine
(calibrate)."""
