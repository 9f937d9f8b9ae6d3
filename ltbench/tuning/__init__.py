"""Tuning a run under an equal compute budget (`tuner`), on Optuna studies opened one way (`study`)."""
