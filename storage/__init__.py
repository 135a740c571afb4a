"""Storage plumbing shared by the stores of traffic/ and monitors/ (imports nothing of ours)."""
