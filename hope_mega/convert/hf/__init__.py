"""The Hugging Face model package that `hope_mega.convert.export` copies into every exported folder."""
