"""What a deployment keeps (issue 19): captured completions and feedback (capture.py, redacted by redact.py before
anything reaches the disk), their export as fine-tuning data (feedback.py), the cost ledger (ledger.py, energy.py,
prices.py) and the hash-chained audit log (audit.py). The server writes them; the CLI reads them. All SQLite or
plain files under $HEARTH_HOME unless the caller names another path; nothing here imports the server."""
