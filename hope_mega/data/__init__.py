"""Data: tokenizer training, corpus readers, MDS data prep and the streaming training loader.

Modules: `tokenizer` (load a model, its hash), `tokenizer_train`, `readers` (input formats and
work units), `prep` (corpus → packed MDS shards), `dataset_card`, `loader` (build_train_loader),
`default_corpus` (the built-in demo text), and the `*_cli` modules behind `hope-mega`.
Nothing heavy is imported here: `streaming` and `torch` load only when a loader is built.
"""
