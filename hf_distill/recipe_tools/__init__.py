"""Helpers of the `recipes/` scripts only (command line + YAML, multi-domain text corpora): not part of the library
API. Their errors speak in their own parameter names; the recipes translate them into their flags."""
