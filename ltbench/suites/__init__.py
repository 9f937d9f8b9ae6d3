"""Suites: a comparison written as a YAML file (`schema`), what it would cost (`planner`), running its jobs (`execute`) and its report (`results`). The built-in suites live beside the code."""
