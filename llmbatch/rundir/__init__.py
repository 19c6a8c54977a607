"""The run directory on disk: the prompts reader, the writer (text as it streams,
results.jsonl, summary.json, the lock), the results line schema, identity and resume."""
