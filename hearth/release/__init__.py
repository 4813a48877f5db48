"""Releasing a model responsibly: licence obligations, the model card, openness, the BOM, provenance, signing, the gate."""
