"""Evaluation: ARC-Easy items from a packaged copy, an lm-eval task for them, and in-process scoring.

`hearth.eval.arc` builds the items and the lm-evaluation-harness task; `hearth.eval.loglik` scores
them with hearth's own model, tokenizing exactly as lm-eval's `local-completions` does, so the two
accuracies can be compared number for number.
"""
