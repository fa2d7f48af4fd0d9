"""Evaluation of TGA models: refusal judges, safety metrics, reports and the paper's layer analyses."""
