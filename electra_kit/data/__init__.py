"""Text -> tokenizer -> token shards -> packed sequences -> batches."""
