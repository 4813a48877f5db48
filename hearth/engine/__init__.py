"""Turning a loaded model into text: sampling, generation, (later) scheduling and serving."""
