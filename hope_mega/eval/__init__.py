"""Evaluation: held-out perplexity and bits per byte, synthetic in-context-memory and formal-language
tasks over token ids, and the glue for running lm-evaluation-harness offline on local task files."""
