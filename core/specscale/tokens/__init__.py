"""Text to tokens: corpora, the BPE tokenizer, token shards and their manifest (tokenize), unigram buckets and the
probe set (buckets)."""
