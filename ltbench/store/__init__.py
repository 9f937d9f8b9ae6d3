"""The on-disk store of trained experts: the index, one folder per expert, locks, and the records each expert carries."""
