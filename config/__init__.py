"""The configs that ship with attnbench (package data): config.yaml, the default that runs on a
laptop CPU; lra.yaml, paper-scale LRA; schema.yaml, the JSON schema both are checked against."""
