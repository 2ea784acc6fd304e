"""The names of the measured token sets, shared by every table from the probe to the report: the three
input-frequency buckets (built in buckets.py) and the pooled set. No imports: reading a results table never pulls in
the code that builds buckets."""

BUCKET_NAMES = ("HEAD", "MID", "TAIL")  # frequency buckets, most frequent first
POOLED = "GLOBAL"  # the set that pools every token regardless of bucket
ALL_SETS = (*BUCKET_NAMES, POOLED)  # display and table order of every measured set
