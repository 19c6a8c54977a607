"""The run directory on disk: the prompts reader, the directory's layout and lock, text as
it streams, results.jsonl and the resume index, the writer that orders them, the results
line schema, identity and shards."""
