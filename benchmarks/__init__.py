"""The efficiency sweep as pytest-benchmark benchmarks (package data of attnbench: run through
`attnbench bench` or `snakemake bench`)."""
