"""`python -m bench [--quick] [--duration S] [--profile] ...`: see bench/README.md."""

from bench.run import main

main()
